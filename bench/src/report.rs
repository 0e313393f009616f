//! `compare`: the named scenarios on the gateway's variants and on the peers, one run
//! after another; then a table of medians with ratios to the peers, and the bar the
//! gateway must clear.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::deployment::{Launch, Variant};
use crate::run::{Workload, run};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scenario {
    /// N=1,000, M=2,000, R=0: throughput and CPU per delivery, small group.
    #[value(name = "saturate-1k")]
    Saturate1k,
    /// N=10,000, M=200, R=0: the same, large group.
    #[value(name = "saturate-10k")]
    Saturate10k,
    /// N=5,000, M=200, R=10: latency at 50,000 deliveries/s offered.
    #[value(name = "steady-5k")]
    Steady5k,
    /// N=10,000, M=200, R=10: latency at 100,000 deliveries/s offered (saturation on 2 cores).
    #[value(name = "steady-10k")]
    Steady10k,
    /// 10,000 members in 1,000 groups of 10, 20,000 messages spread over the groups, R=0.
    #[value(name = "many-groups")]
    ManyGroups,
    /// saturate-10k with the group in every member's background: compact `Activity`
    /// notices instead of pushes (what `delivery.background = "compact"` saves).
    #[value(name = "background-10k")]
    Background10k,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Saturate1k,
        Scenario::Saturate10k,
        Scenario::Steady5k,
        Scenario::Steady10k,
        Scenario::ManyGroups,
        Scenario::Background10k,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Saturate1k => "saturate-1k",
            Scenario::Saturate10k => "saturate-10k",
            Scenario::Steady5k => "steady-5k",
            Scenario::Steady10k => "steady-10k",
            Scenario::ManyGroups => "many-groups",
            Scenario::Background10k => "background-10k",
        }
    }

    fn workload(self) -> Workload {
        let (members, messages, rate, groups) = match self {
            Scenario::Saturate1k => (1_000, 2_000, 0.0, 1),
            Scenario::Saturate10k => (10_000, 200, 0.0, 1),
            Scenario::Steady5k => (5_000, 200, 10.0, 1),
            Scenario::Steady10k => (10_000, 200, 10.0, 1),
            Scenario::ManyGroups => (10_000, 20_000, 0.0, 1_000),
            Scenario::Background10k => (10_000, 200, 0.0, 1),
        };
        Workload {
            members,
            messages,
            rate,
            payload_bytes: 200,
            groups,
            window: 64,
            background: self == Scenario::Background10k,
        }
    }

    /// The peers run their own four scenarios only.
    fn has_peers(self) -> bool {
        !matches!(self, Scenario::ManyGroups | Scenario::Background10k)
    }
}

pub struct Plan {
    pub scenarios: Vec<Scenario>,
    pub variants: Vec<Variant>,
    /// Run on saturate-10k only (where the bar compares them).
    pub extra_variants: Vec<Variant>,
    pub runs: usize,
    pub peers: Option<PathBuf>,
    pub jsonl: Option<PathBuf>,
}

pub async fn compare(plan: &Plan, gateway: &Launch) -> anyhow::Result<()> {
    let mut lines = Vec::new();
    for &scenario in &plan.scenarios {
        let mut variants = plan.variants.clone();
        if scenario == Scenario::Saturate10k {
            for extra in &plan.extra_variants {
                if !variants.contains(extra) {
                    variants.push(*extra);
                }
            }
        }
        for round in 1..=plan.runs {
            for &variant in &variants {
                eprintln!(
                    "[chat-bench] {} run {round}/{}: {variant:?}",
                    scenario.name(),
                    plan.runs
                );
                let line = match run(&scenario.workload(), variant, gateway).await {
                    Ok(line) => line,
                    Err(error) => {
                        json!({ "peer": "chat-gateway", "variant": variant, "error": format!("{error:#}") })
                    }
                };
                record(&mut lines, scenario, line, plan.jsonl.as_deref())?;
            }
            if let Some(peers) = plan.peers.as_deref().filter(|_| scenario.has_peers()) {
                eprintln!(
                    "[chat-bench] {} run {round}/{}: peers",
                    scenario.name(),
                    plan.runs
                );
                for line in run_peers(peers, scenario)? {
                    record(&mut lines, scenario, line, plan.jsonl.as_deref())?;
                }
            }
        }
    }
    let medians = medians(&lines);
    print_table(&medians);
    print_bar(&medians, &lines);
    Ok(())
}

fn record(
    lines: &mut Vec<(Scenario, Value)>,
    scenario: Scenario,
    mut line: Value,
    jsonl: Option<&Path>,
) -> anyhow::Result<()> {
    line["scenario"] = json!(scenario.name());
    println!("{line}");
    if let Some(path) = jsonl {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(file, "{line}")?;
    }
    lines.push((scenario, line));
    Ok(())
}

/// Both peers on `scenario` through their own `compare.sh`: their JSON lines.
fn run_peers(peers: &Path, scenario: Scenario) -> anyhow::Result<Vec<Value>> {
    let output = Command::new("bash")
        .arg(peers.join("compare.sh"))
        .arg(scenario.name())
        .stderr(std::process::Stdio::inherit())
        .output()?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// The system a line is about: the gateway's variant, or the peer.
fn system(line: &Value) -> String {
    match line["variant"].as_str() {
        Some(variant) => format!("gateway/{variant}"),
        None => line["peer"].as_str().unwrap_or("?").to_owned(),
    }
}

type Medians = BTreeMap<(Scenario, String), BTreeMap<&'static str, f64>>;

const FIELDS: [&str; 9] = [
    "deliveries_per_s",
    "server_cpu_us_per_delivery",
    "p50_ms",
    "p99_ms",
    "lost",
    "server_peak_rss_mb",
    "rss_per_conn_kb",
    "client_datagrams_per_delivery",
    "ack_frames_per_delivery",
];

fn medians(lines: &[(Scenario, Value)]) -> Medians {
    let mut samples: BTreeMap<(Scenario, String), BTreeMap<&'static str, Vec<f64>>> =
        BTreeMap::new();
    for (scenario, line) in lines.iter().filter(|(_, l)| l.get("error").is_none()) {
        let entry = samples.entry((*scenario, system(line))).or_default();
        for field in FIELDS {
            if let Some(v) = line[field].as_f64() {
                entry.entry(field).or_default().push(v);
            }
        }
    }
    samples
        .into_iter()
        .map(|(key, fields)| {
            let fields = fields
                .into_iter()
                .map(|(field, mut values)| {
                    values.sort_by(f64::total_cmp);
                    (field, values[values.len() / 2])
                })
                .collect();
            (key, fields)
        })
        .collect()
}

fn get(medians: &Medians, scenario: Scenario, system: &str, field: &str) -> Option<f64> {
    medians
        .get(&(scenario, system.to_owned()))?
        .get(field)
        .copied()
}

fn print_table(medians: &Medians) {
    println!(
        "\n| scenario | system | deliv/s | srv µs/deliv | p50 ms | p99 ms | lost | peak RSS MB | RSS/conn KB | client pkts/deliv | ×ceiling deliv/s | ×ceiling µs/deliv | ×socketio deliv/s |"
    );
    println!(
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let show =
        |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    for ((scenario, system), fields) in medians {
        let f = |name: &str| fields.get(name).copied();
        let ratio = |peer: &str, field: &str| {
            let peer = get(medians, *scenario, peer, field)?;
            Some(f(field)? / peer)
        };
        let gateway = system.starts_with("gateway/");
        println!(
            "| {} | {system} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            scenario.name(),
            show(f("deliveries_per_s"), 0),
            show(f("server_cpu_us_per_delivery"), 2),
            show(f("p50_ms"), 1),
            show(f("p99_ms"), 1),
            show(f("lost"), 0),
            show(f("server_peak_rss_mb"), 1),
            show(f("rss_per_conn_kb"), 1),
            show(f("client_datagrams_per_delivery"), 3),
            show(
                ratio("quinn-raw", "deliveries_per_s").filter(|_| gateway),
                2
            ),
            show(
                ratio("quinn-raw", "server_cpu_us_per_delivery").filter(|_| gateway),
                2
            ),
            show(ratio("socketio", "deliveries_per_s").filter(|_| gateway), 2),
        );
    }
}

/// The bar, checked on the medians; each line says PASS, FAIL or n/a.
fn print_bar(medians: &Medians, lines: &[(Scenario, Value)]) {
    let gw = "gateway/embedded";
    let ratio = |scenario, a: &str, b: &str, field| {
        Some(get(medians, scenario, a, field)? / get(medians, scenario, b, field)?)
    };
    let check = |name: &str, value: Option<f64>, ok: fn(f64) -> bool| match value {
        Some(v) => println!("{} {name}: {v:.2}", if ok(v) { "PASS" } else { "FAIL" }),
        None => println!("n/a  {name}: not measured in this run"),
    };
    println!("\nThe bar (gateway/embedded: 1 worker, bundled plugins, embedded store):");
    let s10k = Scenario::Saturate10k;
    check(
        "saturate-10k deliveries/s ≥ 0.7 × quinn-raw",
        ratio(s10k, gw, "quinn-raw", "deliveries_per_s"),
        |v| v >= 0.7,
    );
    check(
        "saturate-10k deliveries/s ≥ 3 × socketio",
        ratio(s10k, gw, "socketio", "deliveries_per_s"),
        |v| v >= 3.0,
    );
    check(
        "saturate-10k CPU/delivery ≤ 1.5 × quinn-raw",
        ratio(s10k, gw, "quinn-raw", "server_cpu_us_per_delivery"),
        |v| v <= 1.5,
    );
    check(
        "steady-5k p99 ≤ 1.2 × quinn-raw",
        ratio(Scenario::Steady5k, gw, "quinn-raw", "p99_ms"),
        |v| v <= 1.2,
    );
    check(
        "saturate-10k RSS/idle connection ≤ 1.5 × quinn-raw",
        ratio(s10k, gw, "quinn-raw", "rss_per_conn_kb"),
        |v| v <= 1.5,
    );
    check(
        "saturate-10k plugins on ≥ 0.9 × plugins off (deliveries/s)",
        ratio(s10k, gw, "gateway/no-plugins", "deliveries_per_s"),
        |v| v >= 0.9,
    );
    if let Some(scaling) = ratio(
        s10k,
        "gateway/three-gateways",
        "gateway/redis",
        "deliveries_per_s",
    ) {
        println!("info 3 gateways ÷ 1 gateway on Redis, saturate-10k deliveries/s: {scaling:.2}");
    }
    let cpu = |scenario| get(medians, scenario, gw, "server_cpu_us_per_delivery");
    if let (Some(compact), Some(full)) = (cpu(Scenario::Background10k), cpu(s10k)) {
        println!(
            "info gateway CPU per member-message, background-10k ÷ saturate-10k (compact notices vs pushes): {:.3}",
            compact / full
        );
    }
    let lost: f64 = lines.iter().filter_map(|(_, l)| l["lost"].as_f64()).sum();
    let failed = lines
        .iter()
        .filter(|(_, l)| l.get("error").is_some())
        .count();
    check("lost deliveries, all runs (must be 0)", Some(lost), |v| {
        v == 0.0
    });
    check("failed runs (must be 0)", Some(failed as f64), |v| v == 0.0);
    check(
        "client datagrams per delivery, saturate-10k (ACKs must not double packets)",
        get(medians, s10k, gw, "client_datagrams_per_delivery"),
        |v| v < 1.0,
    );
}
