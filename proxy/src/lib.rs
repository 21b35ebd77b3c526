//! The agent's L7 proxies. Each listens on an address the agent gives it, learns for every
//! connection or datagram its source and original destination, and asks the agent's policy what to
//! do with it.
pub mod dns;
