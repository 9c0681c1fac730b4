//! The embedded Kubernetes-compatible API.

mod access;
mod builtin;
mod crud;
mod file;
mod http;
mod kubectl;
mod kubectl_must_show;
mod runtime;
mod secured;
mod watch;
