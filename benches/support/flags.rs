//! The benchmarks' command-line knobs: `--flag value`, `--flag=value`, or an environment
//! variable.

/// The value of `flag` among the benchmark's arguments, else of the environment variable
/// `var`.
pub fn value(flag: &str, var: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let prefix = format!("{flag}=");
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix(&prefix).map(str::to_owned))
        })
        .or_else(|| std::env::var(var).ok())
}
