//! `tether sandbox`: serves the imitations (on loopback ports unless told otherwise), prints
//! one line per platform (`<platform> <base-url> <token>`), and serves until Ctrl-C or
//! SIGTERM.
//!
//! In a pod (the Helm chart's `sandbox.enabled`) it runs as
//! `tether sandbox --addr 0.0.0.0 --render-port 8081 ... --sample-tokens`: fixed ports a
//! Service can name, and the tokens of `tether run --sandbox` and the samples, which a user
//! can put in a Secret in advance.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};

use tokio_util::sync::CancellationToken;

use super::{SandboxConfig, SandboxError, sample_token, start};
use crate::platform::Platform;

/// Flags of `tether sandbox`.
#[derive(Clone, Debug, clap::Args)]
pub struct SandboxArgs {
    /// Simulated seconds per wall-clock second (deploys finish and rate-limit windows pass
    /// this many times faster).
    #[arg(long, default_value_t = 1.0, value_parser = time_scale)]
    pub time_scale: f64,
    /// Address to listen on. Anything but loopback (e.g. 0.0.0.0, to serve from a pod)
    /// exposes the sandbox to whoever can reach it: it has no real security (one bearer
    /// token per platform, no TLS) and is for trying Tether only, never for real data.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub addr: IpAddr,
    /// Port of the Render API (0: a free port).
    #[arg(long, default_value_t = 0)]
    pub render_port: u16,
    /// Port of the Vercel API (0: a free port).
    #[arg(long, default_value_t = 0)]
    pub vercel_port: u16,
    /// Port of the Fly.io Machines API (0: a free port).
    #[arg(long, default_value_t = 0)]
    pub fly_port: u16,
    /// Port of the Supabase Management API (0: a free port).
    #[arg(long, default_value_t = 0)]
    pub supabase_port: u16,
    /// Port of the app edge, where every app answers by its host name (0: a free port).
    #[arg(long, default_value_t = 0)]
    pub edge_port: u16,
    /// Accept the fixed tokens `sandbox-<platform>-token` (those of `tether run --sandbox`
    /// and config/samples) instead of random ones made up at start.
    #[arg(long)]
    pub sample_tokens: bool,
}

fn time_scale(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(scale) if scale.is_finite() && scale > 0.0 => Ok(scale),
        _ => Err(format!("{text:?} is not a positive number")),
    }
}

impl SandboxArgs {
    /// The sandbox configuration these flags describe (every platform).
    pub fn config(&self) -> SandboxConfig {
        let ports: HashMap<Platform, u16> = [
            (Platform::Render, self.render_port),
            (Platform::Vercel, self.vercel_port),
            (Platform::Fly, self.fly_port),
            (Platform::Supabase, self.supabase_port),
        ]
        .into_iter()
        .filter(|(_, port)| *port != 0)
        .collect();
        let tokens = if self.sample_tokens {
            Platform::ALL
                .into_iter()
                .map(|p| (p, sample_token(p)))
                .collect()
        } else {
            HashMap::new()
        };
        SandboxConfig {
            time_scale: self.time_scale,
            record: false,
            platforms: Platform::ALL.to_vec(),
            addr: self.addr,
            ports,
            tokens,
            edge_port: self.edge_port,
            ..SandboxConfig::default()
        }
    }
}

/// Runs the sandbox until Ctrl-C or SIGTERM (what a pod is stopped with).
pub async fn serve(args: SandboxArgs) -> Result<(), SandboxError> {
    let shutdown = CancellationToken::new();
    if !args.addr.is_loopback() {
        eprintln!(
            "warning: the sandbox listens on {}: it has no real security and is for trying \
             Tether only",
            args.addr
        );
    }
    // Listening for the signals before anything is printed: whoever reads the addresses
    // may stop the sandbox right away.
    let stopped = stop_signal();
    let handle = start(args.config(), shutdown.clone()).await?;
    let mut out = std::io::stdout().lock();
    for (platform, url, token) in handle.endpoints() {
        // The token is printed on purpose: it is the sandbox's own (made up at start, or the
        // published sample token), and printing it is how a user points clients at it.
        let _ = writeln!(out, "{platform} {url} {}", token.expose());
    }
    let _ = writeln!(out, "edge {}", handle.edge_url());
    let _ = out.flush();
    drop(out);
    stopped.await;
    shutdown.cancel();
    handle.stopped().await;
    Ok(())
}

/// Listens for Ctrl-C and SIGTERM from now on; the future ends at the first of them.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    let sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    let interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    async move {
        match (sigterm, interrupt) {
            (Ok(mut sigterm), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = sigterm.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SandboxArgs,
    }

    fn parse(args: &[&str]) -> Result<SandboxArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("sandbox").chain(args.iter().copied()))
            .map(|cli| cli.args)
    }

    #[test]
    fn by_default_it_serves_every_platform_on_free_loopback_ports_with_random_tokens() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(!args.sample_tokens);
        let config = args.config();
        assert!(config.addr.is_loopback());
        assert!(config.ports.is_empty(), "{:?}", config.ports);
        assert!(config.tokens.is_empty());
        assert_eq!(config.platforms, Platform::ALL.to_vec());
        assert_eq!(config.time_scale, 1.0);
    }

    #[test]
    fn in_a_pod_it_listens_on_every_address_on_fixed_ports_with_the_sample_tokens() {
        let args = parse(&[
            "--addr",
            "0.0.0.0",
            "--render-port",
            "8081",
            "--vercel-port=8082",
            "--fly-port",
            "8083",
            "--supabase-port",
            "8084",
            "--sample-tokens",
            "--time-scale",
            "10",
        ])
        .unwrap();
        let config = args.config();
        assert_eq!(config.addr, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(
            config.ports,
            HashMap::from([
                (Platform::Render, 8081),
                (Platform::Vercel, 8082),
                (Platform::Fly, 8083),
                (Platform::Supabase, 8084),
            ])
        );
        for platform in Platform::ALL {
            assert_eq!(
                config.tokens[&platform].expose(),
                format!("sandbox-{platform}-token")
            );
        }
        assert_eq!(config.time_scale, 10.0);
    }

    #[test]
    fn an_ipv6_address_and_some_fixed_ports_are_accepted() {
        let config = parse(&["--addr", "::", "--vercel-port", "9000"])
            .unwrap()
            .config();
        assert_eq!(config.addr, "::".parse::<IpAddr>().unwrap());
        assert_eq!(config.ports, HashMap::from([(Platform::Vercel, 9000)]));
    }

    #[test]
    fn bad_addresses_ports_and_time_scales_are_refused() {
        for bad in [
            &["--addr", "localhost:8080"][..],
            &["--addr", "example.com"],
            &["--render-port", "70000"],
            &["--fly-port", "-1"],
            &["--time-scale", "0"],
            &["--time-scale", "-2"],
            &["--time-scale", "NaN"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_addr_help_says_the_sandbox_has_no_real_security() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        assert!(
            help.contains("no real security") && help.contains("trying Tether only"),
            "{help}"
        );
    }

    #[tokio::test]
    async fn fixed_ports_and_sample_tokens_are_what_the_sandbox_serves() {
        // A free port to ask for: bind one, note it, release it.
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let port = free.to_string();
        let config = parse(&["--vercel-port", &port, "--sample-tokens"])
            .unwrap()
            .config();
        let shutdown = CancellationToken::new();
        let handle = start(config, shutdown.clone()).await.unwrap();
        assert_eq!(
            handle.url(Platform::Vercel).unwrap(),
            format!("http://127.0.0.1:{free}")
        );
        assert!(handle.url(Platform::Render).unwrap().ends_with("/v1"));
        for (platform, _, token) in handle.endpoints() {
            assert_eq!(token.expose(), sample_token(platform).expose());
        }
        shutdown.cancel();
        handle.stopped().await;
    }
}
