//! One TLS stack (rustls) with one crypto provider (ring), chosen on purpose: with
//! two providers compiled in, rustls cannot pick a process default and clients
//! panic at start-up.

/// Installs ring as the process-wide rustls provider. Idempotent.
pub fn install_crypto_provider() {
    // An Err only means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
