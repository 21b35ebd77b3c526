//! Service load balancing as a library: the service model, its compilation into Maglev tables and
//! backend slots, the reconciler that writes only the difference into the BPF maps, the backend
//! health prober, and the edge LB's config file. Every source (lb.yaml, Kubernetes) ends in [`model`].
pub mod compile;
pub mod config;
pub mod health;
pub mod maglev;
pub mod model;
pub mod reconcile;
pub mod vec_map;
