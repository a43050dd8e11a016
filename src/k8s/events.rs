//! Kubernetes Events (events.k8s.io/v1) on KosliEnvironments, for failures,
//! recoveries and Kosli's non-compliant verdicts.
//!
//! KosliEnvironments are cluster-scoped, and an event about a cluster-scoped
//! object must live in `kube-system` on older API servers (newer ones also accept
//! `default`), so the namespace is a setting with `kube-system` as its default.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};

/// The `reportingController` of every event (a qualified name).
pub const CONTROLLER: &str = "kosli.com/kosli-operator";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    /// The `type` field, as the Events API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

#[derive(Clone)]
pub struct EventPublisher {
    /// `None`: Events are logged, not recorded.
    client: Option<Client>,
    namespace: String,
    instance: String,
}

impl EventPublisher {
    pub fn new(client: Client, namespace: String, instance: String) -> Self {
        Self {
            client: Some(client),
            namespace,
            instance,
        }
    }

    /// Logs each Event instead of recording it: for environments read from a
    /// file, no object exists for an Event to be about.
    pub fn log_only() -> Self {
        Self {
            client: None,
            namespace: String::new(),
            instance: String::new(),
        }
    }

    pub async fn publish(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let name = regarding.name.clone().unwrap_or_default();
        let Some(client) = &self.client else {
            let kind = regarding.kind.as_deref().unwrap_or_default();
            match type_ {
                EventType::Warning => {
                    tracing::warn!(kind, name = %name, reason, "{note}");
                }
                EventType::Normal => tracing::info!(kind, name = %name, reason, "{note}"),
            }
            return Ok(());
        };
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}-")),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(jiff::Timestamp::now())),
            type_: Some(type_.as_str().to_owned()),
            reason: Some(reason.to_owned()),
            action: Some(action.to_owned()),
            // The API caps notes at 1 kB.
            note: Some(note.chars().take(1000).collect()),
            regarding: Some(regarding),
            reporting_controller: Some(CONTROLLER.to_owned()),
            reporting_instance: Some(self.instance.chars().take(128).collect()),
            ..Event::default()
        };
        Api::<Event>::namespaced(client.clone(), &self.namespace)
            .create(&PostParams::default(), &event)
            .await
            .map(drop)
    }
}
