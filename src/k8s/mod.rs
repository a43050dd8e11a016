//! The Kubernetes edge: the client, the watches that feed the cluster store,
//! Events, leader election on a Lease, and pod lists read from a file.

pub mod client;
pub mod events;
pub mod leader;
pub mod pod_file;
pub mod reported_pod;
pub mod store;
pub mod watches;
