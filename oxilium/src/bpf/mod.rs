//! The kernel side as the agent sees it: embedded objects, loading and attaching programs, and
//! typed access to the pinned maps.
pub mod batch;
mod ct_upgrade;
pub mod decap;
pub mod endpoint;
pub mod flows;
pub mod lb_maps;
pub mod loader;
pub mod masq;
pub mod nodeport;
pub mod objects;
pub mod podlb;
pub mod policy;
pub mod sizes;
pub mod socklb;
