//! a, b, c against the real Docker engine and one real node daemon: a cold session create
//! against `docker run -d` (a), a create from a warm pool (b), a `print(1)` round trip against
//! `docker exec` (c), each side alternated in the same run; and the node daemon's memory at
//! idle (g).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sandbox_ops::stack::{Binaries, Spec};
use sandbox_ops::testkit;
use serde_json::json;

use crate::measure::{Bench, rss_mb};
use crate::report::{Latencies, Row, Verdict, failed, not_measured};
use crate::{Args, IMAGE, TEMPLATE};

/// Warm containers per node in the warm-pool measurement (b).
const WARM_POOL_SIZE: usize = 2;
/// How long the warm-pool measurement lets the host settle after the pool filled.
const WARM_POOL_SETTLE: Duration = Duration::from_secs(1);
/// The label of the containers `docker run` makes here, so they can all be removed.
const BENCH_LABEL: &str = "io.sandbox.bench=1";

/// `docker run -d -i` with the isolation and limits the node daemon applies to `python-basic`.
const DOCKER_RUN: &[&str] = &[
    "run",
    "-d",
    "-i",
    "--init",
    "--network",
    "none",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
    "--memory",
    "512m",
    "--memory-swap",
    "512m",
    "--cpus",
    "1",
    "--pids-limit",
    "256",
    "--label",
    BENCH_LABEL,
    IMAGE,
];

pub async fn run(args: &Args, binaries: &Binaries) -> Vec<Row> {
    if args.skip_docker {
        return [
            ("a", "cold session create vs docker run -d"),
            ("b", "session create from a warm pool"),
            ("c", "print(1) round trip vs docker exec"),
        ]
        .into_iter()
        .map(|(id, figure)| not_measured(id, figure, "--skip-docker"))
        .collect();
    }
    eprintln!("== against Docker ({} runs each)", args.docker_runs);
    match against_docker(args.docker_runs, binaries).await {
        Ok(results) => rows(&results),
        Err(error) => {
            eprintln!("  failed: {error:#}");
            let figure = "cold create, print(1) and warm pool against Docker";
            vec![failed("a", figure, &error)]
        }
    }
}

fn rows(results: &DockerResults) -> Vec<Row> {
    let mut rows = vec![versus_docker(
        "a",
        "cold session create (HTTP, to running) vs docker run -d -i",
        &results.cold,
    )];
    rows.push(match &results.warm {
        Some(warm) => Row {
            id: "b",
            figure: "session create from a warm pool (HTTP)".to_owned(),
            measured: warm.summary(),
            target: "p50 ≤ 15 ms, p99 ≤ 50 ms".to_owned(),
            verdict: Verdict::of(warm.percentile(50.0) <= 15.0 && warm.percentile(99.0) <= 50.0),
            json: json!({ "latency": warm.json(), "note": results.warm_note }),
        },
        None => not_measured("b", "session create from a warm pool", &results.warm_note),
    });
    rows.push(versus_docker(
        "c",
        "print(1) round trip (HTTP) vs docker exec python3 -c",
        &results.exec,
    ));
    if let Some(rss) = results.node_daemon_idle_rss {
        rows.push(Row {
            id: "g",
            figure: "resident memory, one real node daemon at idle".to_owned(),
            measured: format!("{rss:.1} MB"),
            target: "≤ 30 MB".to_owned(),
            verdict: Verdict::of(rss <= 30.0),
            json: json!({ "rss_mb": rss }),
        });
    }
    rows
}

/// Ours against Docker's own command, judged by the ratio of the medians.
fn versus_docker(id: &'static str, figure: &str, (ours, docker): &(Latencies, Latencies)) -> Row {
    let ratio = ours.percentile(50.0) / docker.percentile(50.0);
    Row {
        id,
        figure: figure.to_owned(),
        measured: format!(
            "ours {}; docker {}; ratio of p50s {ratio:.2}",
            ours.summary(),
            docker.summary()
        ),
        target: "ratio ≤ 1.10".to_owned(),
        verdict: Verdict::of(ratio <= 1.10),
        json: json!({ "ours": ours.json(), "docker": docker.json(), "ratio_p50": ratio }),
    }
}

struct DockerResults {
    cold: (Latencies, Latencies),
    warm: Option<Latencies>,
    warm_note: String,
    exec: (Latencies, Latencies),
    node_daemon_idle_rss: Option<f64>,
}

/// The measurements on a stack of their own, removed afterwards with every container made.
async fn against_docker(runs: usize, binaries: &Binaries) -> anyhow::Result<DockerResults> {
    let mut bench = Bench::start(binaries, 64).await?;
    let result = measure(&mut bench, runs).await;
    // Stops the services and removes the node's containers and network.
    drop(bench);
    let _ = Command::new("sh")
        .args([
            "-c",
            &format!("docker ps -aq --filter label={BENCH_LABEL} | xargs -r docker rm -f"),
        ])
        .output();
    result
}

async fn measure(bench: &mut Bench, runs: usize) -> anyhow::Result<DockerResults> {
    // The comparisons run one sandbox at a time; on a 2-core host the engine's own CPU count
    // would leave no room while a removed session's share is being given back.
    let spec = Spec::default().option("--cpu-cores", 8).log_level("warn");
    let node_id = bench.stack.add_node(spec, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let node_daemon_idle_rss = bench.stack.node(&node_id)?.pid().and_then(rss_mb);
    let http = reqwest::Client::new();
    let url = bench.stack.api()?.base().to_owned();

    // a. Cold create, alternating with docker run.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let start = Instant::now();
        let session = create_session(&http, &url, TEMPLATE).await?;
        ours.push(ms_since(start));
        delete_session(&http, &url, session["id"].as_str().unwrap_or_default()).await?;
        let start = Instant::now();
        let container = docker(DOCKER_RUN)?;
        theirs.push(ms_since(start));
        docker(&["rm", "-f", &container])?;
    }
    let cold = (Latencies(ours), Latencies(theirs));

    // b. From a warm pool, when templates have one.
    let (warm, warm_note) = warm_pool(&http, &url, runs).await;

    // c. print(1), alternating with docker exec, in one session.
    let exec = print_one(&http, &url, runs).await?;
    Ok(DockerResults {
        cold,
        warm,
        warm_note,
        exec,
        node_daemon_idle_rss,
    })
}

/// c: `print(1)` through the API and through `docker exec`, alternated, in one session.
async fn print_one(
    http: &reqwest::Client,
    url: &str,
    runs: usize,
) -> anyhow::Result<(Latencies, Latencies)> {
    let session = create_session(http, url, TEMPLATE).await?;
    let id = session["id"].as_str().unwrap_or_default().to_owned();
    let container = session["container_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let run = || async {
        let response = http
            .post(format!("{url}/api/v1/sessions/{id}/executions"))
            .json(&json!({ "code": "print(1)" }))
            .send()
            .await?;
        let body: serde_json::Value = response.json().await?;
        if body["stdout"] != "1\n" {
            bail!("print(1) answered {body}");
        }
        anyhow::Ok(())
    };
    run().await?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let start = Instant::now();
        run().await?;
        ours.push(ms_since(start));
        let start = Instant::now();
        let out = docker(&["exec", &container, "python3", "-c", "print(1)"])?;
        theirs.push(ms_since(start));
        if out != "1" {
            bail!("docker exec printed {out:?}");
        }
    }
    delete_session(http, url, &id).await?;
    Ok((Latencies(ours), Latencies(theirs)))
}

/// b: session creates from a template with a warm pool, when the control plane has them.
async fn warm_pool(http: &reqwest::Client, url: &str, runs: usize) -> (Option<Latencies>, String) {
    let template = json!({
        "id": "bench-warm", "image": IMAGE, "cpu": 1, "memory": 512, "pids": 256,
        "warm_pool_size": WARM_POOL_SIZE,
    });
    let created = http
        .post(format!("{url}/api/v1/templates"))
        .json(&template)
        .send()
        .await;
    match created {
        Ok(response) if response.status().as_u16() == 201 => {}
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            return (
                None,
                format!("templates take no warm_pool_size here ({status}: {body})"),
            );
        }
        Err(error) => return (None, format!("could not create the template: {error}")),
    }
    let mut samples = Vec::new();
    for _ in 0..runs {
        // Each create finds the pool full (filled, or refilled after the previous claim) and
        // the host idle again: a container that just started still busies the CPU while its
        // executor agent boots, which is the refill's cost, not the claim's.
        if let Err(error) = wait_for_full_pool("bench-warm", WARM_POOL_SIZE).await {
            return (None, error.to_string());
        }
        tokio::time::sleep(WARM_POOL_SETTLE).await;
        let start = Instant::now();
        match create_session(http, url, "bench-warm").await {
            Ok(session) => {
                samples.push(ms_since(start));
                let id = session["id"].as_str().unwrap_or_default();
                if let Err(error) = delete_session(http, url, id).await {
                    return (None, format!("delete failed: {error}"));
                }
            }
            Err(error) => return (None, format!("create failed: {error}")),
        }
    }
    let _ = http
        .delete(format!("{url}/api/v1/templates/bench-warm"))
        .send()
        .await;
    (
        Some(Latencies(samples)),
        format!(
            "pool of {WARM_POOL_SIZE} per node, each create {} s after the pool is full again",
            WARM_POOL_SETTLE.as_secs()
        ),
    )
}

/// Waits until `template_id`'s pool holds `size` running warm containers.
async fn wait_for_full_pool(template_id: &str, size: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while testkit::warm_containers(template_id).await?.len() < size {
        if Instant::now() > deadline {
            bail!("the warm pool of {template_id} did not fill to {size} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

pub(crate) async fn create_session(
    http: &reqwest::Client,
    url: &str,
    template: &str,
) -> anyhow::Result<serde_json::Value> {
    let response = http
        .post(format!("{url}/api/v1/sessions"))
        .json(&json!({ "template_id": template }))
        .send()
        .await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await?;
    if status.as_u16() != 201 {
        bail!("create answered {status}: {body}");
    }
    Ok(body)
}

pub(crate) async fn delete_session(
    http: &reqwest::Client,
    url: &str,
    id: &str,
) -> anyhow::Result<()> {
    http.delete(format!("{url}/api/v1/sessions/{id}"))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .context("running docker")?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub(crate) fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}
