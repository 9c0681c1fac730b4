//! Leader election end to end: two controller instances share one API and one Lease; only
//! the holder reconciles, and the other takes over once the first stops (releasing the
//! Lease on shutdown).

use std::time::Duration;

use crate::support::{TestCluster, eventually};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;
use tether::api::Environment;
use tether::controller::leader::{LeaseConfig, LeaseTimings, run_elected};
use tether::controller::{ControllerConfig, Health};
use tether::telemetry::MetricsRegistry;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

struct Instance {
    identity: String,
    metrics: MetricsRegistry,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Instance {
    fn start(client: Client, identity: &str) -> Instance {
        let metrics = MetricsRegistry::new();
        let shutdown = CancellationToken::new();
        let mut lease = LeaseConfig::new("tether-controller", "default", identity);
        lease.timings = LeaseTimings::new(
            Duration::from_secs(3),
            Duration::from_secs(2),
            Duration::from_secs(1),
        )
        .unwrap();
        let config = ControllerConfig {
            min_retry: Duration::from_millis(100),
            max_retry: Duration::from_secs(1),
            ..ControllerConfig::default()
        };
        let task = tokio::spawn({
            let metrics = metrics.clone();
            let shutdown = shutdown.clone();
            async move {
                run_elected(client, config, lease, metrics, Health::new(), shutdown)
                    .await
                    .unwrap();
            }
        });
        Instance {
            identity: identity.to_string(),
            metrics,
            shutdown,
            task,
        }
    }

    /// Reconciles this instance ran, over every controller and result.
    fn reconciles(&self) -> f64 {
        self.metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("controller_runtime_reconcile_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the instance stops in time")
            .unwrap();
    }
}

async fn holder(client: &Client) -> Option<String> {
    let leases: Api<Lease> = Api::default_namespaced(client.clone());
    leases
        .get_opt("tether-controller")
        .await
        .ok()??
        .spec?
        .holder_identity
}

async fn create_ready_environment(client: &Client, name: &str) {
    let envs: Api<Environment> = Api::default_namespaced(client.clone());
    let env: Environment = serde_json::from_value(json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Environment",
        "metadata": {"name": name}, "spec": {},
    }))
    .unwrap();
    envs.create(&PostParams::default(), &env).await.unwrap();
    eventually(WAIT, || async {
        let env = envs.get(name).await.ok()?;
        env.status?
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == tether::api::ConditionStatus::True)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_the_standby_takes_over_when_it_stops() {
    tether::install_crypto_provider();
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let first = Instance::start(client.clone(), "replica-a");
    let second = Instance::start(client.clone(), "replica-b");

    let leader = eventually(WAIT, || holder(&client)).await;
    let (leader, standby) = if leader == first.identity {
        (first, second)
    } else {
        (second, first)
    };
    create_ready_environment(&client, "one").await;
    assert!(leader.reconciles() > 0.0);
    assert_eq!(standby.reconciles(), 0.0, "the standby must not reconcile");

    // Every write names Tether: the Lease its election manager, the Environment the status
    // manager and, for the finalizer patch that names none, the client's User-Agent.
    let managers = |fields: Option<Vec<ManagedFieldsEntry>>| -> Vec<String> {
        fields
            .unwrap_or_default()
            .into_iter()
            .filter_map(|f| f.manager)
            .collect()
    };
    let leases: Api<Lease> = Api::default_namespaced(client.clone());
    let lease = leases.get("tether-controller").await.unwrap();
    let lease_managers = managers(lease.metadata.managed_fields);
    assert!(
        !lease_managers.is_empty() && lease_managers.iter().all(|m| m == "tether-leader-election"),
        "{lease_managers:?}"
    );
    let envs: Api<Environment> = Api::default_namespaced(client.clone());
    let mut env_managers = managers(envs.get("one").await.unwrap().metadata.managed_fields);
    env_managers.sort();
    assert!(
        env_managers.contains(&"tether-controller".to_string()),
        "{env_managers:?}"
    );
    assert!(
        env_managers.iter().all(|m| m.starts_with("tether")),
        "{env_managers:?}"
    );

    // Stopping the leader releases the Lease; the standby acquires it and reconciles.
    let leader_identity = leader.identity.clone();
    leader.stop().await;
    // Released on shutdown: the stopped leader no longer holds the Lease.
    assert_ne!(
        holder(&client).await.as_deref(),
        Some(leader_identity.as_str())
    );
    let next = eventually(WAIT, || async {
        holder(&client).await.filter(|h| *h == standby.identity)
    })
    .await;
    assert_ne!(next, leader_identity);
    create_ready_environment(&client, "two").await;
    assert!(standby.reconciles() > 0.0);
    standby.stop().await;
}

/// A TCP forwarder to the API server that can be cut: every open connection is dropped and
/// new ones are refused, as when a node loses its network.
struct Link {
    addr: std::net::SocketAddr,
    cut: CancellationToken,
}

impl Link {
    async fn to(upstream: std::net::SocketAddr) -> Link {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = CancellationToken::new();
        tokio::spawn({
            let cut = cut.clone();
            async move {
                loop {
                    let accepted = tokio::select! {
                        accepted = listener.accept() => accepted,
                        () = cut.cancelled() => return,
                    };
                    let Ok((mut inbound, _)) = accepted else {
                        continue;
                    };
                    let cut = cut.clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await
                        else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            () = cut.cancelled() => {}
                        }
                    });
                }
            }
        });
        Link { addr, cut }
    }

    fn client(&self) -> Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        Client::try_from(config).unwrap()
    }
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_stops_within_the_renew_deadline_before_the_lease_expires() {
    tether::install_crypto_provider();
    let cluster = TestCluster::start().await;
    let client = cluster.client();
    let link = Link::to(cluster.addr()).await;
    let timings = LeaseTimings::new(
        Duration::from_secs(6),
        Duration::from_secs(3),
        Duration::from_secs(1),
    )
    .unwrap();
    let mut lease = LeaseConfig::new("tether-controller", "default", "cut-off");
    lease.timings = timings;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_elected(
        link.client(),
        ControllerConfig::default(),
        lease,
        MetricsRegistry::new(),
        Health::new(),
        shutdown.clone(),
    ));
    eventually(WAIT, || async {
        holder(&client).await.filter(|h| h == "cut-off")
    })
    .await;
    // Renewed every retry period while connected.
    let renewed = |lease: Lease| lease.spec.and_then(|s| s.renew_time);
    let leases: Api<Lease> = Api::default_namespaced(client.clone());
    let first = renewed(leases.get("tether-controller").await.unwrap());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = renewed(leases.get("tether-controller").await.unwrap());
    assert_ne!(first, later, "the leader renews every retry period");

    link.cut.cancel();
    let cut_at = tokio::time::Instant::now();
    let outcome = tokio::time::timeout(timings.duration, task)
        .await
        .expect("the leader stops before its Lease expires")
        .unwrap();
    let error = outcome.expect_err("losing the Lease is an error: the process exits");
    assert!(
        matches!(
            error,
            tether::controller::ControllerError::LeadershipLapsed { .. }
        ),
        "{error}"
    );
    assert!(cut_at.elapsed() >= timings.renew_deadline - timings.retry_period);
    assert!(
        error
            .to_string()
            .contains("could not be renewed within the renew deadline (3s)"),
        "{error}"
    );
}
