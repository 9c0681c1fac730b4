//! Kubernetes clients that say who they are. Every request carries the User-Agent
//! `tether/<version> (<component>)`, so audit logs name the Tether component that made it,
//! and writes without an explicit field manager are recorded under `tether` (the API server
//! takes the User-Agent's first word), never `unknown`.

use http::HeaderValue;
use http::header::USER_AGENT;

/// The User-Agent of `component` (`controller`, `run`, ...): `tether/0.1.0 (controller)`.
pub fn user_agent(component: &str) -> String {
    format!("tether/{} ({component})", env!("CARGO_PKG_VERSION"))
}

/// A client for `config` whose requests carry [`user_agent`] of `component`.
pub fn named(mut config: kube::Config, component: &str) -> Result<kube::Client, kube::Error> {
    // The components are Tether's own words; a name that is no valid header value still
    // leaves the product name.
    let agent = HeaderValue::from_str(&user_agent(component))
        .unwrap_or_else(|_| HeaderValue::from_static("tether"));
    config.headers.retain(|(name, _)| name != USER_AGENT);
    config.headers.push((USER_AGENT, agent));
    kube::Client::try_from(config)
}

/// A client for the configuration found the usual way (in-cluster, then `KUBECONFIG`, then
/// `~/.kube/config`), named after `component`.
pub async fn infer(component: &str) -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    named(config, component)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_agent_names_the_version_and_the_component() {
        assert_eq!(
            user_agent("controller"),
            format!("tether/{} (controller)", env!("CARGO_PKG_VERSION"))
        );
    }
}
