//! The identity-based policy engine: labels → identities → selector cache → per-endpoint policy maps.
//!
//! Pure Rust, no I/O, no kernel: a manifests folder is read by `k8s::manifests::read_folder` and its
//! objects handed to [`manifests::Manifests::from_objects`]. The tc programs enforce the output: the
//! per-endpoint map entries defined in `abi::policy`. See docs/policy.md for the model.
pub mod api;
pub mod cidr;
pub mod dns;
pub mod endpoint_policy;
pub mod engine;
pub mod fqdn;
pub mod identity;
pub mod l7;
pub mod labels;
pub mod manifests;
pub mod mapstate;
pub mod netpol;
pub mod offline;
pub mod rule;
pub mod selector;
pub mod selector_cache;
pub mod translate;

pub use endpoint_policy::{Enforcement, MapDelta};
pub use engine::{Config, EndpointSpec, Engine};
pub use identity::{IdentityAllocator, LocalAllocator, NumericIdentity};
pub use labels::{Label, LabelFilter, Labels, Source};
pub use mapstate::{MapEntry, MapKey, PolicyMap, PortKey, Verdict};
pub use selector::Selector;
