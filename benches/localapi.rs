//! Throughput of the in-process Kubernetes API, through `kube::Client` over loopback HTTP:
//! creates per second (sequential and 16 in flight) and watch fan-out (N watchers each
//! receiving every one of 1,000 creates), for the memory store and the redb File store.
//! `make bench` runs it; it prints its numbers and the File/Memory ratios.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use tether::localapi::{self, LocalApiConfig, LocalApiHandle, StoreConfig};
use tokio_util::sync::CancellationToken;

const OBJECTS: usize = 1_000;
const IN_FLIGHT: usize = 16;
const WATCHERS: [usize; 3] = [1, 10, 50];

fn config_map(prefix: &str, i: usize) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(format!("{prefix}-{i}"));
    cm.data = Some([("index".to_owned(), i.to_string())].into());
    cm
}

async fn server(store: StoreConfig) -> anyhow::Result<(LocalApiHandle, CancellationToken)> {
    let shutdown = CancellationToken::new();
    let handle = localapi::start(
        LocalApiConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            store,
            crds: Vec::new(),
            security: None,
        },
        shutdown.clone(),
    )
    .await?;
    Ok((handle, shutdown))
}

/// Creates `OBJECTS` config maps with `in_flight` concurrent requests; returns objects/s.
async fn create_all(api: &Api<ConfigMap>, prefix: &str, in_flight: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    stream::iter(0..OBJECTS)
        .map(|i| {
            let api = api.clone();
            let cm = config_map(prefix, i);
            async move { api.create(&PostParams::default(), &cm).await }
        })
        .buffer_unordered(in_flight)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    Ok(OBJECTS as f64 / start.elapsed().as_secs_f64())
}

/// `watchers` watches each receive all `OBJECTS` creates; returns delivered events/s.
async fn fan_out(api: &Api<ConfigMap>, prefix: &str, watchers: usize) -> anyhow::Result<f64> {
    let list = api.list_metadata(&Default::default()).await?;
    let from = list.metadata.resource_version.unwrap_or_default();
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let mut events = api
            .watch(&WatchParams::default().disable_bookmarks(), &from)
            .await?
            .boxed();
        tasks.push(tokio::spawn(async move {
            let mut added = 0;
            while added < OBJECTS {
                match tokio::time::timeout(Duration::from_secs(60), events.next()).await {
                    Ok(Some(Ok(WatchEvent::Added(_)))) => added += 1,
                    Ok(Some(Ok(_))) => {}
                    other => anyhow::bail!("watch ended early after {added} events: {other:?}"),
                }
            }
            Ok(())
        }));
    }
    let start = Instant::now();
    create_all(api, prefix, IN_FLIGHT).await?;
    for task in tasks {
        task.await??;
    }
    Ok((watchers * OBJECTS) as f64 / start.elapsed().as_secs_f64())
}

struct Numbers {
    sequential: f64,
    concurrent: f64,
    fan_out: Vec<(usize, f64)>,
}

async fn measure(store: StoreConfig) -> anyhow::Result<Numbers> {
    let (handle, shutdown) = server(store).await?;
    let api: Api<ConfigMap> = Api::default_namespaced(handle.client());
    let sequential = create_all(&api, "seq", 1).await?;
    let concurrent = create_all(&api, "par", IN_FLIGHT).await?;
    let mut fan = Vec::new();
    for (round, watchers) in WATCHERS.into_iter().enumerate() {
        fan.push((
            watchers,
            fan_out(&api, &format!("fan{round}"), watchers).await?,
        ));
    }
    shutdown.cancel();
    handle.stopped().await;
    Ok(Numbers {
        sequential,
        concurrent,
        fan_out: fan,
    })
}

fn main() -> anyhow::Result<()> {
    tether::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let memory = measure(StoreConfig::Memory).await?;
        let file = measure(StoreConfig::File(dir.path().join("bench.redb"))).await?;
        println!("localapi: {OBJECTS} ConfigMaps through kube::Client over loopback HTTP");
        println!(
            "{:<44} {:>12} {:>12} {:>10}",
            "", "memory", "file", "file/mem"
        );
        let row = |label: String, m: f64, f: f64| {
            println!("{label:<44} {m:>12.0} {f:>12.0} {:>10.2}", f / m);
        };
        row(
            "create, sequential (objects/s)".into(),
            memory.sequential,
            file.sequential,
        );
        row(
            format!("create, {IN_FLIGHT} in flight (objects/s)"),
            memory.concurrent,
            file.concurrent,
        );
        for ((watchers, m), (_, f)) in memory.fan_out.iter().zip(&file.fan_out) {
            row(
                format!("watch fan-out, {watchers} watchers (events/s)"),
                *m,
                *f,
            );
        }
        Ok(())
    })
}
