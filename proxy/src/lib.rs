//! The agent's L7 proxies (docs/l7.md): the endpoint programs hand redirected flows to
//! transparent listeners on the node ([`listener`]); the HTTP proxy ([`http`]) enforces HTTP
//! rules per request and forwards what is allowed to the original destination; the DNS proxy
//! ([`dns`]) answers for the names DNS rules allow and learns the addresses toFQDNs selects.
pub mod dns;
pub mod http;
pub mod listener;
