//! Notifications of a Release's phase changes: the webhooks a Release names (else its
//! Environment's), the two bodies ([`generic_body`], [`slack_body`], pure), and the delivery
//! ([`Notifier::deliver`]) with retries.
//!
//! When it is sent: the reconcile that reaches a new phase sends it before writing that
//! phase to status, together with `status.notifiedPhase`, so a change is sent at least once
//! (a controller stopped between the delivery and the status write sends it again) and a
//! restarted controller does not send a change it recorded. A delivery retries connection
//! failures, timeouts, 429 and 5xx answers with exponential backoff (3 attempts), within 5 s
//! for all the webhooks of one change (they are sent in parallel), so a dead receiver delays
//! a reconcile by seconds at most; a webhook that still fails is a Warning event
//! `NotificationFailed` and `tether_notifications_total{result="failed"}`, and the change is
//! not sent again.
//!
//! A webhook's URL is a credential (a Slack incoming-webhook URL is all it takes to post):
//! it is read from its Secret for each delivery, kept in [`WebhookUrl`] (whose `Debug`
//! prints `***`), and never written to a body, log, event, metric or error text (transport
//! errors are described by kind, and logged `without_url`).

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::future::join_all;
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::release::{Notifications, ReleasePhase, ReleaseStatus, Webhook, WebhookFormat};
use crate::controller::conditions::Verdict;
use crate::controller::references::{Reference, Snapshot};

/// One phase change of a Release: the generic body, and what the Slack body says.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notice {
    /// Always `Release`.
    pub kind: &'static str,
    /// The Release's namespace.
    pub namespace: String,
    /// The Release's name.
    pub name: String,
    /// The Environment it rolls out to.
    pub environment: String,
    /// The version it rolls out.
    pub version: String,
    /// The phase it entered.
    pub phase: ReleasePhase,
    /// The phase it left (`null` for a new Release).
    pub previous_phase: Option<ReleasePhase>,
    /// The reason of its conditions (`Succeeded`, `DeployFailed`, `RolledBack`, …).
    pub reason: String,
    /// What its conditions say, for a person.
    pub message: String,
    /// When the change was seen (RFC 3339).
    pub at: String,
}

impl Notice {
    /// The reason and message of `verdict`, as a notice carries them.
    pub fn verdict(verdict: &Verdict) -> (String, String) {
        match verdict {
            Verdict::Ready { reason, message }
            | Verdict::NotReady { reason, message }
            | Verdict::Stalled { reason, message }
            | Verdict::Progressing { reason, message } => (reason.clone(), message.clone()),
            Verdict::Suspended => ("Suspended".into(), String::new()),
        }
    }
}

/// What a reconcile that reports `phase` does about notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    /// The phase to record in `status.notifiedPhase`.
    pub phase: ReleasePhase,
    /// Whether entering it is to be sent: it was not announced yet.
    pub send: bool,
}

/// What a reconcile of a Release whose status is `status`, reporting `phase`, records and
/// sends (`None`: no phase at all). A Release that reached its phase before it recorded
/// notified phases has had that phase announced (or had nothing to announce it to), so an
/// upgraded controller, or notifications added later, do not announce old news.
pub fn due(status: Option<&ReleaseStatus>, phase: Option<ReleasePhase>) -> Option<Due> {
    let notified = status.and_then(|s| s.notified_phase.or(s.phase));
    let phase = phase.or(notified)?;
    Some(Due {
        phase,
        send: Some(phase) != notified,
    })
}

/// The webhooks to tell of entering `phase`: the Release's own `notifications`, else the
/// Environment's, those subscribed to it.
pub fn webhooks<'a>(
    release: Option<&'a Notifications>,
    environment: Option<&'a Notifications>,
    phase: ReleasePhase,
) -> Vec<&'a Webhook> {
    release
        .or(environment)
        .map(|n| {
            n.webhooks
                .iter()
                .filter(|w| w.events.iter().any(|e| e.matches(phase)))
                .collect()
        })
        .unwrap_or_default()
}

/// The `generic` body: the notice as a JSON object.
pub fn generic_body(notice: &Notice) -> Value {
    serde_json::to_value(notice).unwrap_or(Value::Null)
}

/// The longest message a Slack body quotes (Slack takes 3,000 characters per text block).
const SLACK_MESSAGE_CHARS: usize = 1000;

/// The `slack` body: a short line in `text` (what notifications and clients without blocks
/// show), and the same with the reason and message as blocks.
pub fn slack_body(notice: &Notice) -> Value {
    let icon = match notice.phase {
        ReleasePhase::Succeeded => ":white_check_mark:",
        ReleasePhase::Failed => ":x:",
        ReleasePhase::RollingBack | ReleasePhase::RolledBack => ":leftwards_arrow_with_hook:",
        ReleasePhase::AwaitingApproval => ":raised_hand:",
        _ => ":arrow_forward:",
    };
    let phase = format!("{:?}", notice.phase);
    let text = format!(
        "{icon} Release {} (version {}) to {}/{}: {phase}",
        escape(&notice.name),
        escape(&notice.version),
        escape(&notice.namespace),
        escape(&notice.environment),
    );
    let headline = format!(
        "{icon} Release *{}* (version `{}`) to Environment *{}* in {}: *{phase}*",
        escape(&notice.name),
        escape(&notice.version),
        escape(&notice.environment),
        escape(&notice.namespace),
    );
    let mut message: String = notice.message.chars().take(SLACK_MESSAGE_CHARS).collect();
    if notice.message.chars().count() > SLACK_MESSAGE_CHARS {
        message.push('…');
    }
    let from = notice
        .previous_phase
        .map_or_else(|| "new".to_string(), |p| format!("{p:?}"));
    let mut context = format!("{from} → {phase} · {}", escape(&notice.reason));
    if !message.is_empty() {
        context.push_str(": ");
        context.push_str(&escape(&message));
    }
    json!({
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": headline}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    })
}

/// Escapes the three characters Slack's markup gives a meaning (`<your name>` would be a
/// link otherwise).
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A webhook URL, read from its Secret: `Debug` never prints it.
#[derive(Clone)]
pub struct WebhookUrl(reqwest::Url);

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Why one attempt failed (never with the URL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// The receiver answered this status.
    Status(u16),
    /// No answer within the attempt's timeout.
    Timeout,
    /// No connection.
    Connect,
    /// Another transport error (TLS, a broken body).
    Transport,
}

impl Failure {
    /// Whether another attempt may succeed: connection failures, timeouts, 429 and 5xx.
    fn retryable(&self) -> bool {
        match self {
            Failure::Status(code) => *code == 429 || *code >= 500,
            Failure::Timeout | Failure::Connect => true,
            Failure::Transport => false,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Status(code) => write!(f, "HTTP {code}"),
            Failure::Timeout => f.write_str("no answer in time"),
            Failure::Connect => f.write_str("cannot connect"),
            Failure::Transport => f.write_str("transport error"),
        }
    }
}

/// How one webhook's delivery ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The webhook's name.
    pub webhook: String,
    /// Its body format.
    pub format: WebhookFormat,
    /// `Err(why)` when it was not delivered (no URL in it).
    pub result: Result<(), String>,
}

impl Delivery {
    /// The `format` metric label.
    pub fn format_label(&self) -> &'static str {
        match self.format {
            WebhookFormat::Generic => "generic",
            WebhookFormat::Slack => "slack",
        }
    }
}

/// Sends the webhooks' requests.
#[derive(Clone, Debug)]
pub struct Notifier {
    client: reqwest::Client,
    /// Attempts per webhook, the first included.
    attempts: usize,
    /// The wait before the second attempt; it doubles for each further one (with jitter).
    first_retry: Duration,
    /// The longest one attempt waits for an answer.
    attempt_timeout: Duration,
    /// The longest the delivery of one change to all its webhooks takes, retries included.
    budget: Duration,
}

impl Default for Notifier {
    fn default() -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(2))
            .user_agent(concat!("tether-notify/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Notifier {
            client,
            attempts: 3,
            first_retry: Duration::from_millis(250),
            attempt_timeout: Duration::from_secs(2),
            budget: Duration::from_secs(5),
        }
    }
}

impl Notifier {
    /// Sends `notice` to each of `webhooks` (in parallel), their URLs read from the Secrets
    /// of `namespace`, and says how each delivery ended.
    pub async fn deliver(
        &self,
        client: &kube::Client,
        namespace: &str,
        webhooks: &[&Webhook],
        notice: &Notice,
    ) -> Vec<Delivery> {
        let refs: Vec<Reference> = webhooks
            .iter()
            .map(|w| Reference::secret_key(&w.url_secret_ref, format!("webhook {:?}", w.name)))
            .collect();
        let secrets = Snapshot::read(client, namespace, &refs).await;
        let sends = webhooks.iter().zip(&refs).map(|(webhook, reference)| {
            let url = match &secrets {
                Err(error) => Err(error.to_string()),
                Ok(snapshot) => url_of(snapshot, reference, webhook),
            };
            async move {
                let result = match url {
                    Ok(url) => self.send(webhook, &url, notice).await,
                    Err(why) => Err(why),
                };
                Delivery {
                    webhook: webhook.name.clone(),
                    format: webhook.format,
                    result,
                }
            }
        });
        join_all(sends).await
    }

    /// Posts the body of `webhook`'s format to `url`, retrying within the budget.
    async fn send(
        &self,
        webhook: &Webhook,
        url: &WebhookUrl,
        notice: &Notice,
    ) -> Result<(), String> {
        let body = match webhook.format {
            WebhookFormat::Generic => generic_body(notice),
            WebhookFormat::Slack => slack_body(notice),
        };
        let attempts = AtomicUsize::new(0);
        let attempt = || async {
            attempts.fetch_add(1, Ordering::Relaxed);
            self.attempt(&url.0, &body).await
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.first_retry)
            .with_max_times(self.attempts.saturating_sub(1))
            .with_jitter();
        let retried = attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(Failure::retryable)
            .notify(|failure, wait| {
                tracing::debug!(webhook = %webhook.name, %failure, ?wait, "retrying a notification");
            });
        let tries = || attempts.load(Ordering::Relaxed);
        match tokio::time::timeout(self.budget, retried).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(failure)) => Err(format!("{failure} after {} attempt(s)", tries())),
            Err(_) => Err(format!(
                "not delivered within {}s ({} attempt(s))",
                self.budget.as_secs(),
                tries()
            )),
        }
    }

    async fn attempt(&self, url: &reqwest::Url, body: &Value) -> Result<(), Failure> {
        let sent = self
            .client
            .post(url.clone())
            .json(body)
            .timeout(self.attempt_timeout)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(Failure::Status(response.status().as_u16())),
            Err(error) => {
                let failure = if error.is_timeout() {
                    Failure::Timeout
                } else if error.is_connect() {
                    Failure::Connect
                } else {
                    Failure::Transport
                };
                tracing::debug!(error = %error.without_url(), %failure, "a notification attempt failed");
                Err(failure)
            }
        }
    }
}

/// The URL of `webhook` from the Secrets read, or why there is none (never the value).
fn url_of(
    snapshot: &Snapshot,
    reference: &Reference,
    webhook: &Webhook,
) -> Result<WebhookUrl, String> {
    if let Some(missing) = snapshot.missing(std::slice::from_ref(reference)).first() {
        return Err(missing.to_string());
    }
    let secret = &webhook.url_secret_ref;
    let invalid = || {
        format!(
            "the value of key {:?} of Secret {:?} is not an http:// or https:// URL",
            secret.key, secret.name
        )
    };
    let value = snapshot.values.get(secret).ok_or_else(invalid)?;
    let url = reqwest::Url::parse(value.expose().trim()).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Err(invalid());
    }
    Ok(WebhookUrl(url))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SecretKeyRef;
    use crate::api::release::WebhookEvent;

    fn notice() -> Notice {
        Notice {
            kind: "Release",
            namespace: "shop".into(),
            name: "prod-1-4-2".into(),
            environment: "production".into(),
            version: "1.4.2".into(),
            phase: ReleasePhase::AwaitingApproval,
            previous_phase: Some(ReleasePhase::Pending),
            reason: "AwaitingApproval".into(),
            message: "waiting for approval: kubectl annotate release prod-1-4-2 tether.dev/approved-by=<your name>".into(),
            at: "2026-12-06T10:00:00Z".into(),
        }
    }

    fn webhook(name: &str, events: Vec<WebhookEvent>) -> Webhook {
        Webhook {
            name: name.into(),
            url_secret_ref: SecretKeyRef {
                name: "hooks".into(),
                key: name.into(),
            },
            format: WebhookFormat::Generic,
            events,
        }
    }

    #[test]
    fn the_generic_body_describes_the_change_in_camel_case() {
        assert_eq!(
            generic_body(&notice()),
            json!({
                "kind": "Release", "namespace": "shop", "name": "prod-1-4-2",
                "environment": "production", "version": "1.4.2",
                "phase": "AwaitingApproval", "previousPhase": "Pending",
                "reason": "AwaitingApproval",
                "message": "waiting for approval: kubectl annotate release prod-1-4-2 tether.dev/approved-by=<your name>",
                "at": "2026-12-06T10:00:00Z",
            })
        );
        let first = Notice {
            previous_phase: None,
            ..notice()
        };
        assert_eq!(generic_body(&first)["previousPhase"], Value::Null);
    }

    #[test]
    fn the_slack_body_is_a_short_line_with_blocks_and_escapes_slack_markup() {
        let body = slack_body(&notice());
        assert_eq!(
            body["text"],
            ":raised_hand: Release prod-1-4-2 (version 1.4.2) to shop/production: AwaitingApproval"
        );
        let blocks = body["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "section");
        assert_eq!(
            blocks[0]["text"]["text"],
            ":raised_hand: Release *prod-1-4-2* (version `1.4.2`) to Environment *production* in shop: *AwaitingApproval*"
        );
        let context = blocks[1]["elements"][0]["text"].as_str().unwrap();
        assert!(
            context.starts_with("Pending → AwaitingApproval · AwaitingApproval: waiting"),
            "{context}"
        );
        assert!(
            context.ends_with("approved-by=&lt;your name&gt;"),
            "{context}"
        );
        let succeeded = slack_body(&Notice {
            phase: ReleasePhase::Succeeded,
            previous_phase: None,
            message: "x".repeat(5000),
            ..notice()
        });
        assert!(
            succeeded["text"]
                .as_str()
                .unwrap()
                .starts_with(":white_check_mark:")
        );
        let context = succeeded["blocks"][1]["elements"][0]["text"]
            .as_str()
            .unwrap();
        assert!(context.starts_with("new → Succeeded"), "{context}");
        assert!(context.chars().count() < 1100, "quoted in part");
    }

    #[test]
    fn a_release_uses_its_own_webhooks_else_its_environments_filtered_by_phase() {
        let own = Notifications {
            webhooks: vec![
                webhook("all", vec![WebhookEvent::All]),
                webhook("ends", vec![WebhookEvent::Succeeded, WebhookEvent::Failed]),
            ],
        };
        let environment = Notifications {
            webhooks: vec![webhook("team", vec![WebhookEvent::All])],
        };
        let names = |hooks: Vec<&Webhook>| -> Vec<String> {
            hooks.iter().map(|w| w.name.clone()).collect()
        };
        assert_eq!(
            names(webhooks(
                Some(&own),
                Some(&environment),
                ReleasePhase::Deploying
            )),
            ["all"]
        );
        assert_eq!(
            names(webhooks(Some(&own), None, ReleasePhase::Succeeded)),
            ["all", "ends"]
        );
        assert_eq!(
            names(webhooks(None, Some(&environment), ReleasePhase::Failed)),
            ["team"]
        );
        assert!(webhooks(None, None, ReleasePhase::Failed).is_empty());
    }

    #[test]
    fn a_phase_is_sent_once_and_a_phase_reached_before_notified_phases_existed_is_not() {
        use ReleasePhase::{Deploying, Pending, Succeeded, Verifying};
        let status = |phase, notified_phase| ReleaseStatus {
            phase,
            notified_phase,
            ..ReleaseStatus::default()
        };
        let due_now = |status: Option<&ReleaseStatus>, phase| due(status, phase).unwrap();
        // A new Release: its first phase is sent.
        assert_eq!(
            due_now(None, Some(Pending)),
            Due {
                phase: Pending,
                send: true
            }
        );
        // A change is sent, the same phase again is not (a restart, a requeue).
        let deploying = status(Some(Deploying), Some(Deploying));
        assert!(due_now(Some(&deploying), Some(Verifying)).send);
        assert!(!due_now(Some(&deploying), Some(Deploying)).send);
        // Sent, but the status write that would record it failed: the next reconcile
        // reaching it sends it again (at least once).
        let unrecorded = status(Some(Pending), Some(Pending));
        assert!(due_now(Some(&unrecorded), Some(Deploying)).send);
        // Reached before notifiedPhase existed: old news.
        let upgraded = status(Some(Succeeded), None);
        assert_eq!(
            due_now(Some(&upgraded), Some(Succeeded)),
            Due {
                phase: Succeeded,
                send: false
            }
        );
        // A report without a phase keeps what was recorded.
        assert_eq!(due_now(Some(&deploying), None).phase, Deploying);
        assert_eq!(due(None, None), None);
    }

    #[test]
    fn only_connection_failures_timeouts_429_and_5xx_are_retried() {
        for retried in [
            Failure::Status(500),
            Failure::Status(503),
            Failure::Status(429),
            Failure::Timeout,
            Failure::Connect,
        ] {
            assert!(retried.retryable(), "{retried}");
        }
        for given_up in [
            Failure::Status(400),
            Failure::Status(404),
            Failure::Status(410),
            Failure::Transport,
        ] {
            assert!(!given_up.retryable(), "{given_up}");
        }
    }

    #[test]
    fn a_webhook_url_is_read_from_its_secret_and_never_printed() {
        let hook = webhook("slack", vec![WebhookEvent::All]);
        let reference = Reference::secret_key(&hook.url_secret_ref, "webhook \"slack\"");
        let mut snapshot = Snapshot::default();
        snapshot
            .secrets
            .insert("hooks".into(), Some(["slack".to_string()].into()));
        let secret_url = "https://hooks.slack.com/services/T0/B0/s3cr3t";
        snapshot.values.insert(
            "hooks",
            "slack",
            crate::platform::Token::new(format!("{secret_url}\n")),
        );
        let url = url_of(&snapshot, &reference, &hook).unwrap();
        assert_eq!(url.0.as_str(), secret_url);
        assert_eq!(format!("{url:?}"), "***");
        snapshot.values.insert(
            "hooks",
            "slack",
            crate::platform::Token::new("ftp://s3cr3t.example.com/"),
        );
        let why = url_of(&snapshot, &reference, &hook).unwrap_err();
        assert_eq!(
            why,
            "the value of key \"slack\" of Secret \"hooks\" is not an http:// or https:// URL"
        );
        let missing = url_of(&Snapshot::default(), &reference, &hook).unwrap_err();
        assert_eq!(missing, "Secret \"hooks\" not found (webhook \"slack\")");
    }
}
