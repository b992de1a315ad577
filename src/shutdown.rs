//! Shutdown: one trigger, any number of listeners.
//!
//! `run` takes a future that resolves when the gateway should stop; everything long-lived
//! (listeners, key refresh, the decision-log writer) holds a [`Signal`] and winds down when it fires.

/// Resolves once shutdown has begun. Cheap to clone.
#[derive(Clone)]
pub struct Signal(tokio::sync::watch::Receiver<bool>);

/// Starts the shutdown; dropping it starts it too.
pub struct Trigger(tokio::sync::watch::Sender<bool>);

pub fn channel() -> (Trigger, Signal) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    (Trigger(tx), Signal(rx))
}

impl Trigger {
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Signal {
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|fired| *fired).await;
    }
}
