//! `keel-fuzz [--seconds N] [--seed S] [target …]`: fuzzes every target (or
//! those named) for N seconds in all (default 90), split evenly. Exits 1 if
//! any input panicked; those inputs are saved under `fuzz/regressions/`.

use keel_fuzz::targets::TARGETS;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).and_then(|v| v.parse::<u64>().ok());
    let seconds = value("--seconds").unwrap_or(90);
    let seed = value("--seed").unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs()));
    let named: Vec<&String> = args.iter().filter(|a| !a.starts_with("--") && a.parse::<u64>().is_err()).collect();
    let chosen: Vec<_> = TARGETS.iter().filter(|t| named.is_empty() || named.iter().any(|n| *n == t.name)).collect();
    if chosen.is_empty() {
        eprintln!("no such target; targets: {}", TARGETS.iter().map(|t| t.name).collect::<Vec<_>>().join(", "));
        std::process::exit(2);
    }
    let each = Duration::from_secs(seconds) / chosen.len() as u32;
    // Panics are caught and reported per input; the default hook's output would bury the report.
    std::panic::set_hook(Box::new(|_| {}));
    println!("keel-fuzz: seed {seed}, {} per target", humantime(each));
    let mut crashed = false;
    for (i, target) in chosen.into_iter().enumerate() {
        let report = keel_fuzz::fuzz(target, each, seed.wrapping_add(i as u64));
        println!("  {:<16} {:>8} runs, {:>5} outcomes, {} crashes", report.target, report.runs, report.outcomes, report.crashes.len());
        for (path, message) in &report.crashes {
            crashed = true;
            println!("    crash: {message}\n      input saved to {} (replayed by `cargo test -p keel-fuzz`)", path.display());
        }
    }
    if crashed {
        std::process::exit(1);
    }
}

fn humantime(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}
