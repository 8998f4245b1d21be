//! `shoal bench-runtime` (hidden): the runtime half of scripts/bench/runtime.sh. Times
//! create+start+stop+delete of N containers through the runtime and its keeper, one
//! after another, and prints one JSON line per container.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use shoal_runtime::container::spec::ContainerSpec;

use super::Globals;

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 50)]
    count: usize,
    #[arg(long)]
    image: String,
    /// Also leave one prepared (not started) container with this name, whose bundle the
    /// script hands to runc.
    #[arg(long)]
    keep_bundle: Option<String>,
    /// Start N containers, count the processes that are not theirs, and remove them.
    #[arg(long)]
    resident: Option<usize>,
}

pub async fn run(g: &Globals, a: BenchArgs) -> anyhow::Result<ExitCode> {
    let rt = super::container::open_runtime(g).await?;
    rt.ensure_image(
        &a.image,
        &super::image::pull_options(&g.data_root(), &g.insecure_registries),
    )
    .await?;
    let spec = ContainerSpec {
        image: a.image.clone(),
        command: Some(vec!["sleep".into(), "3600".into()]),
        stop_signal: Some("KILL".into()),
        ..Default::default()
    };
    for i in 0..a.count {
        let id = format!("bench-{i}");
        let t = Instant::now();
        rt.prepare(&id, &spec).await?;
        rt.start(&id).await?;
        rt.stop(&id, Some(Duration::from_secs(5))).await?;
        rt.remove(&id).await?;
        println!(
            "{}",
            json!({"container": i, "ms": t.elapsed().as_secs_f64() * 1000.0})
        );
    }
    if let Some(n) = a.resident {
        for i in 0..n {
            let id = format!("resident-{i}");
            rt.prepare(&id, &spec).await?;
            rt.start(&id).await?;
        }
        let shoal = std::env::current_exe()?;
        let mut helpers = 0;
        let in_containers = format!("{}/", g.cgroup_parent().trim_end_matches('/'));
        for e in std::fs::read_dir("/proc")?.flatten() {
            let is_shoal =
                std::fs::read_link(e.path().join("exe")).ok().as_deref() == Some(shoal.as_path());
            // a container's init is a clone of the keeper until it has exec'd its command
            let in_container = std::fs::read_to_string(e.path().join("cgroup"))
                .unwrap_or_default()
                .contains(&in_containers);
            // numeric entries only: /proc/self and /proc/thread-self are this process again
            let is_pid = e
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit());
            if is_pid && is_shoal && !in_container {
                helpers += 1;
            }
        }
        // this process and the keeper are shoal; anything more would be per container
        println!("{}", json!({"running": n, "shoal_processes": helpers}));
        for i in 0..n {
            rt.remove(&format!("resident-{i}")).await?;
        }
    }
    if let Some(name) = a.keep_bundle {
        rt.prepare(&name, &spec).await?;
        println!("{}", json!({"bundle": rt.dir(&name).join("bundle")}));
    }
    Ok(ExitCode::SUCCESS)
}
