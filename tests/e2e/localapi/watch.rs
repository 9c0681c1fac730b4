//! Watch semantics end to end: resume from a resourceVersion (every change once, in order),
//! 410 Gone for expired versions and kube-runtime's watcher relisting after it, bookmarks,
//! streaming lists, and selector transitions.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::TestCluster;
use crate::support::widget::Widget;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, ListParams, Patch, PatchParams, PostParams, VersionMatch, WatchEvent, WatchParams,
};
use kube::runtime::watcher::{self, Event};
use kube::{CustomResourceExt, ResourceExt};
use serde_json::json;

fn config_map(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

fn rv(obj: &impl ResourceExt) -> u64 {
    obj.resource_version().unwrap().parse().unwrap()
}

async fn next_event(
    stream: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Unpin),
) -> WatchEvent<ConfigMap> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a watch event within 10s")
        .expect("the stream is open")
        .expect("the event decodes")
}

#[tokio::test]
async fn a_watch_resumed_from_a_resource_version_sees_every_later_change_once_and_in_order() {
    let cluster = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(cluster.client());
    let first = api
        .create(&PostParams::default(), &config_map("base", json!({})))
        .await
        .unwrap();
    let start = rv(&first);

    // Concurrent writers on several objects.
    let mut writers = Vec::new();
    for w in 0..4 {
        let api = api.clone();
        writers.push(tokio::spawn(async move {
            let name = format!("w{w}");
            let mut rvs = vec![rv(&api
                .create(&PostParams::default(), &config_map(&name, json!({})))
                .await
                .unwrap())];
            for i in 0..10 {
                let patched = api
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"data": {"i": i.to_string()}})),
                    )
                    .await
                    .unwrap();
                rvs.push(rv(&patched));
            }
            rvs
        }));
    }
    let mut written = BTreeSet::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    assert_eq!(written.len(), 44);

    // Resume from the version before all of them.
    let mut stream = api
        .watch(&WatchParams::default(), &start.to_string())
        .await
        .unwrap()
        .boxed();
    let mut seen = Vec::new();
    while seen.len() < written.len() {
        match next_event(&mut stream).await {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => seen.push(rv(&o)),
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "in commit order: {seen:?}"
    );
    assert_eq!(seen.iter().copied().collect::<BTreeSet<_>>(), written);

    // The same stream then delivers live changes, exactly once.
    let live = api
        .patch(
            "base",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"live": "1"}})),
        )
        .await
        .unwrap();
    loop {
        match next_event(&mut stream).await {
            WatchEvent::Modified(o) => {
                assert_eq!(rv(&o), rv(&live));
                break;
            }
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_expired_resource_version_gets_410_gone_for_watch_and_exact_list() {
    let cluster = TestCluster::builder().watch_history(3).start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(cluster.client());
    let first = api
        .create(&PostParams::default(), &config_map("a", json!({})))
        .await
        .unwrap();
    for i in 0..5 {
        api.create(
            &PostParams::default(),
            &config_map(&format!("b{i}"), json!({})),
        )
        .await
        .unwrap();
    }
    let mut stream = api
        .watch(&WatchParams::default(), &rv(&first).to_string())
        .await
        .unwrap()
        .boxed();
    match next_event(&mut stream).await {
        WatchEvent::Error(status) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected 410, got {other:?}"),
    }
    let err = api
        .list(
            &ListParams::default()
                .at(&rv(&first).to_string())
                .matching(VersionMatch::Exact),
        )
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(status) => assert_eq!(status.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn an_exact_list_at_a_retained_version_shows_the_objects_as_they_were() {
    let cluster = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(cluster.client());
    let a = api
        .create(&PostParams::default(), &config_map("a", json!({"v": "1"})))
        .await
        .unwrap();
    api.create(&PostParams::default(), &config_map("b", json!({})))
        .await
        .unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"v": "2"}}})),
    )
    .await
    .unwrap();
    let past = api
        .list(
            &ListParams::default()
                .at(&rv(&a).to_string())
                .matching(VersionMatch::Exact),
        )
        .await
        .unwrap();
    assert_eq!(past.items.len(), 1);
    assert_eq!(past.items[0].labels()["v"], "1");
    assert_eq!(past.metadata.resource_version, a.metadata.resource_version);
}

#[tokio::test]
async fn kube_runtime_watcher_recovers_from_410_by_relisting() {
    let cluster = TestCluster::builder().watch_history(3).start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(cluster.client());
    api.create(&PostParams::default(), &config_map("a", json!({})))
        .await
        .unwrap();
    let mut stream = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(Event::InitDone))) => break,
            Ok(Some(Ok(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // The watcher holds the list's version; push it out of the retained history before the
    // watcher opens its watch.
    for i in 0..6 {
        api.create(
            &PostParams::default(),
            &config_map(&format!("n{i}"), json!({})),
        )
        .await
        .unwrap();
    }
    let mut saw_gone = false;
    let mut relisted = BTreeSet::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the watcher makes progress")
            .expect("the watcher stream continues")
        {
            Err(watcher::Error::WatchError(status)) => {
                assert_eq!(status.code, 410);
                saw_gone = true;
            }
            Err(other) => panic!("unexpected watcher error {other}"),
            Ok(Event::Init) => relisted.clear(),
            Ok(Event::InitApply(cm)) => {
                relisted.insert(cm.name_any());
            }
            Ok(Event::InitDone) => break,
            Ok(other) => panic!("unexpected event before the relist finished: {other:?}"),
        }
    }
    assert!(saw_gone, "the watch was answered with 410 Gone");
    let expected: BTreeSet<String> = std::iter::once("a".to_owned())
        .chain((0..6).map(|i| format!("n{i}")))
        .collect();
    assert_eq!(relisted, expected);
}

#[tokio::test]
async fn no_bookmarks_arrive_when_they_are_not_allowed() {
    let cluster = TestCluster::builder()
        .bookmark_interval(Duration::from_millis(50))
        .start()
        .await;
    let api: Api<ConfigMap> = Api::default_namespaced(cluster.client());
    let mut stream = api
        .watch(&WatchParams::default().disable_bookmarks().timeout(1), "0")
        .await
        .unwrap()
        .boxed();
    let events: Vec<_> = (&mut stream).collect().await;
    assert!(
        events.is_empty(),
        "nothing happened, nothing sent: {events:?}"
    );
}

#[tokio::test]
async fn bookmarks_arrive_when_allowed_and_carry_only_the_resource_version() {
    let cluster = TestCluster::builder()
        .bookmark_interval(Duration::from_millis(100))
        .start()
        .await;
    let api: Api<ConfigMap> = Api::default_namespaced(cluster.client());
    let created = api
        .create(&PostParams::default(), &config_map("a", json!({})))
        .await
        .unwrap();
    let mut stream = api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    match next_event(&mut stream).await {
        WatchEvent::Added(o) => assert_eq!(o.name_any(), "a"),
        other => panic!("unexpected {other:?}"),
    }
    match next_event(&mut stream).await {
        WatchEvent::Bookmark(b) => {
            assert!(b.metadata.resource_version.parse::<u64>().unwrap() >= rv(&created));
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
}

#[tokio::test]
async fn streaming_lists_send_the_initial_objects_and_the_end_bookmark() {
    let cluster = TestCluster::builder().crd(Widget::crd()).start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(cluster.client());
    for name in ["a", "b"] {
        api.create(&PostParams::default(), &config_map(name, json!({})))
            .await
            .unwrap();
    }
    let mut stream =
        watcher::watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut names = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .expect("progress")
            .expect("no watcher error")
            .expect("stream open")
        {
            Event::Init => {}
            Event::InitApply(cm) => names.push(cm.name_any()),
            Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(names, vec!["a", "b"]);
    api.create(&PostParams::default(), &config_map("c", json!({})))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), stream.try_next())
        .await
        .expect("progress")
        .expect("no watcher error")
        .expect("stream open")
    {
        Event::Apply(cm) => assert_eq!(cm.name_any(), "c"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn objects_leaving_a_watched_label_selector_are_seen_as_deleted() {
    let cluster = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(cluster.client());
    api.create(
        &PostParams::default(),
        &config_map("x", json!({"env": "prod"})),
    )
    .await
    .unwrap();
    let mut stream = api
        .watch(&WatchParams::default().labels("env=prod"), "0")
        .await
        .unwrap()
        .boxed();
    assert!(matches!(
        next_event(&mut stream).await,
        WatchEvent::Added(_)
    ));
    api.create(
        &PostParams::default(),
        &config_map("other", json!({"env": "dev"})),
    )
    .await
    .unwrap();
    api.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"env": "dev"}}})),
    )
    .await
    .unwrap();
    loop {
        match next_event(&mut stream).await {
            WatchEvent::Deleted(o) => {
                assert_eq!(o.name_any(), "x");
                break;
            }
            WatchEvent::Bookmark(_) => {}
            other => panic!("expected x to leave the selection, got {other:?}"),
        }
    }
}
