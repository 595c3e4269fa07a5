//! End to end, as a user runs it: `ksql-lake simulator` serves the transactions dataset in its
//! own process, one write per row as ksqlDB does, and `ksql-lake run` (another process) reads
//! it into a local lake: daily partitions, zstd. The clock runs from the start of `ksql-lake
//! run` until it exits after SIGTERM, sent once every row was received; so the shutdown flush
//! and its commits are timed, and every row is checked in `_metadata.json` afterwards.
//!
//! ```text
//! cargo bench --bench pipeline                      # 1 and 8 feeds, over HTTP/1.1 (the default on http://) and HTTP/2
//! cargo bench --bench pipeline -- --rows 500000 --feeds 1 --http 2
//! cargo bench --bench pipeline -- --compare         # and the Python approach and DuckDB
//! cargo bench --bench pipeline -- --age             # and age flushes (1 s) under full load
//! ```
//!
//! Each configuration moves `--rows` rows in all (default 2,000,000), split evenly over its
//! feeds. Printed per configuration: rows/s, MB/s of ksqlDB response, the Parquet MB written,
//! the service's CPU-seconds per million rows and its peak RSS (from `wait4`, the service's
//! process alone), against the targets. `--compare` also times, on the same rows, the original
//! design's Python approach (json per row, pandas, pyarrow, snappy) reading the same push query,
//! and DuckDB (2 threads) copying the same rows from a local newline-delimited JSON file to
//! zstd Parquet; both need the Python in `.venv` (scripts/test.sh or scripts/bench-compare
//! installs it), or `KSQL_LAKE_VENV`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test: this build's, or `KSQL_LAKE_BENCH_BIN` to time another build
/// against it side by side.
fn bin() -> std::ffi::OsString {
    std::env::var_os("KSQL_LAKE_BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_ksql-lake").into())
}
/// The service's memory budget in these runs (`--budget MiB` sets another), and what peak RSS
/// is held to above it.
const BUDGET_MIB: u64 = 256;
const RSS_ALLOWANCE_MIB: u64 = 64;
/// Targets from the speed issue, per-row framing on this 2-core machine.
const TARGET_ONE_FEED: f64 = 1_200_000.0;
const TARGET_EIGHT_FEEDS: f64 = 1_500_000.0;
const TARGET_CPU_PER_MILLION: f64 = 1.2;
/// No configuration may run longer than this.
const RUN_LIMIT: Duration = Duration::from_secs(900);

struct Options {
    rows: u64,
    feeds: Vec<u32>,
    http: Vec<&'static str>,
    compare: bool,
    age: bool,
    budget_mib: u64,
}

fn options() -> Options {
    let mut options = Options {
        rows: 2_000_000,
        feeds: vec![1, 8],
        http: vec!["1.1", "2"],
        compare: false,
        age: false,
        budget_mib: BUDGET_MIB,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--rows" => options.rows = value().parse().expect("--rows: a number"),
            "--feeds" => options.feeds = value().split(',').map(|n| n.parse().expect("--feeds: 1,8")).collect(),
            "--http" => {
                options.http = value()
                    .split(',')
                    .map(|version| match version {
                        "1.1" => "1.1",
                        "2" => "2",
                        other => panic!("--http: 1.1 or 2, not {other}"),
                    })
                    .collect()
            }
            "--compare" => options.compare = true,
            "--age" => options.age = true,
            "--budget" => options.budget_mib = value().parse().expect("--budget: MiB"),
            "--bench" => {} // what `cargo bench` passes
            other => panic!("unknown argument {other}"),
        }
    }
    options
}

fn main() {
    let options = options();
    let work = tempfile::tempdir().expect("a temporary directory");
    println!("ksql-lake end to end: {} rows of 10 columns, one chunk per row, daily partitions, zstd", options.rows);
    let mut one_feed = None;
    for &feeds in &options.feeds {
        for &http in &options.http {
            let result = run_service(work.path(), options.rows, feeds, http, options.budget_mib, false);
            result.print(&format!("{feeds} feed{} HTTP/{http}", if feeds == 1 { "" } else { "s" }));
            let target = if feeds == 1 { TARGET_ONE_FEED } else { TARGET_EIGHT_FEEDS };
            println!(
                "  targets: {} rows/s {}, {TARGET_CPU_PER_MILLION} CPU-s per million rows {}, peak RSS {} MiB {}",
                target as u64,
                verdict(result.rows_per_second() >= target),
                verdict(result.cpu_per_million() <= TARGET_CPU_PER_MILLION),
                options.budget_mib + RSS_ALLOWANCE_MIB,
                verdict(result.peak_rss_mib <= (options.budget_mib + RSS_ALLOWANCE_MIB) as f64),
            );
            if feeds == 1 && one_feed.is_none() {
                one_feed = Some(result);
            }
        }
    }
    if options.age {
        // Hourly partitions that never close (30 days of lateness), so flushes are for age as
        // each hour's rows go by; the delay is read from the service's histogram before it
        // stops.
        let result = run_service(work.path(), options.rows, 1, "1.1", options.budget_mib, true);
        result.print("1 feed, age flushes");
        if let Some(age) = &result.age_flushes {
            println!(
                "  {} flushes for age (flush_max_age = 1s): {} committed within 1 s of due ({}), mean delay {:.2} s",
                age.count,
                age.within_a_second,
                verdict(age.count > 0 && age.within_a_second == age.count),
                age.sum_seconds / age.count.max(1) as f64
            );
        }
    }
    if options.compare {
        let ours = match one_feed {
            Some(result) => result,
            None => run_service(work.path(), options.rows, 1, "1.1", options.budget_mib, false),
        };
        compare(work.path(), options.rows, &ours);
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// What one timed process did.
struct Measured {
    rows: u64,
    response_bytes: u64,
    output_bytes: u64,
    seconds: f64,
    cpu_seconds: f64,
    peak_rss_mib: f64,
    /// The simulator's CPU time meanwhile, when it served the rows.
    stand_in_cpu_seconds: Option<f64>,
    age_flushes: Option<AgeFlushes>,
}

/// `ksql_lake_age_flush_delay_seconds` at the end of a run.
struct AgeFlushes {
    count: u64,
    within_a_second: u64,
    sum_seconds: f64,
}

impl Measured {
    fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.seconds
    }

    fn cpu_per_million(&self) -> f64 {
        self.cpu_seconds / (self.rows as f64 / 1e6)
    }

    fn print(&self, label: &str) {
        println!(
            "{label:<22} {:>10.0} rows/s {:>7.1} MB/s in {:>7.1} MB out {:>6.2} s {:>5.2} CPU-s/M rows peak RSS {:>5.0} MiB",
            self.rows_per_second(),
            self.response_bytes as f64 / 1e6 / self.seconds,
            self.output_bytes as f64 / 1e6,
            self.seconds,
            self.cpu_per_million(),
            self.peak_rss_mib
        );
        if let Some(seconds) = self.stand_in_cpu_seconds {
            println!(
                "  the ksqlDB stand-in meanwhile: {:.2} CPU-s per million rows, of the machine's 2 cores",
                seconds / (self.rows as f64 / 1e6)
            );
        }
    }
}

/// The simulator in its own process, loaded and listening.
struct Simulator {
    child: Child,
    url: String,
    bytes: u64,
}

impl Simulator {
    fn start(rows_per_stream: u64, streams: u32, ndjson: Option<&Path>) -> Simulator {
        let mut command = Command::new(bin());
        command.args(["simulator", "--listen", "127.0.0.1:0", "--bench-rows", &rows_per_stream.to_string()]);
        command.args(["--bench-streams", &streams.to_string()]);
        if let Some(path) = ndjson {
            command.arg("--bench-ndjson").arg(path);
        }
        command.env("RUST_LOG", "warn").stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = command.spawn().expect("start the simulator");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("its stdout")).read_line(&mut line).expect("its ready line");
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|part| part.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in the simulator's ready line: {line:?}"))
                .to_string()
        };
        Simulator { url: field("url="), bytes: field("bytes=").parse().expect("a byte count"), child }
    }
}

impl Simulator {
    /// CPU-seconds the simulator's process has used so far.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name, which is in parentheses: utime and stime are the 12th and 13th.
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
        let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|t| t.parse::<f64>().ok()).sum());
        // SAFETY: sysconf has no preconditions.
        ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ksql-lake run` on `feeds` streams of `rows / feeds` rows each.
fn run_service(work: &Path, rows: u64, feeds: u32, http: &str, budget_mib: u64, age: bool) -> Measured {
    let per_feed = rows / u64::from(feeds);
    let simulator = Simulator::start(per_feed, feeds, None);
    let run = tempfile::tempdir_in(work).expect("a run directory");
    let lake = run.path().join("lake");
    let port = free_port();
    let partitioning = if age { "hourly" } else { "daily" };
    let mut config = format!(
        "[ksqldb]\nurl = \"{}\"\nhttp2 = \"{}\"\n[lake]\nurl = \"file://{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
         [memory]\nbudget = \"{budget_mib}MiB\"\n[defaults]\npartitioning = \"{partitioning}\"\ncompression = \"zstd\"\n",
        simulator.url,
        if http == "2" { "always" } else { "never" },
        lake.display()
    );
    if age {
        config.push_str("flush_max_age = \"1s\"\nallowed_lateness = \"30d\"\n");
    }
    for feed in 1..=feeds {
        config.push_str(&format!(
            "[[feeds]]\nname = \"transactions_{feed}\"\nkind = \"stream\"\nsource = \"TRANSACTIONS_{feed}\"\n"
        ));
    }
    let config_path = run.path().join("ksql-lake.toml");
    std::fs::write(&config_path, config).expect("write the config");
    let log = std::fs::File::create(run.path().join("service.log")).expect("a log file");
    let simulator_cpu = simulator.cpu_seconds();
    let started = Instant::now();
    let mut service = Command::new(bin())
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start ksql-lake run");
    let expected = per_feed * u64::from(feeds);
    loop {
        assert!(started.elapsed() < RUN_LIMIT, "ksql-lake run did not receive {expected} rows within {RUN_LIMIT:?}");
        if let Ok(Some(status)) = service.try_wait() {
            let log = std::fs::read_to_string(run.path().join("service.log")).unwrap_or_default();
            panic!("ksql-lake run exited early ({status}):\n{log}");
        }
        if scrape(port).is_some_and(|text| received_rows(&text) >= expected) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let age_flushes = age.then(|| age_flushes(&scrape(port).unwrap_or_default()));
    // SAFETY: kill(2) on the child's pid, which is not yet reaped.
    unsafe { libc::kill(service.id() as libc::pid_t, libc::SIGTERM) };
    let usage = wait(&mut service);
    let seconds = started.elapsed().as_secs_f64();
    let simulator_cpu = simulator.cpu_seconds() - simulator_cpu;
    let committed = committed_rows(&lake);
    assert_eq!(committed, expected, "every row committed once (per _metadata.json)");
    Measured {
        rows: expected,
        response_bytes: simulator.bytes,
        output_bytes: parquet_bytes(&lake),
        seconds,
        cpu_seconds: usage.cpu_seconds,
        peak_rss_mib: usage.peak_rss_mib,
        stand_in_cpu_seconds: Some(simulator_cpu),
        age_flushes,
    }
}

/// The same rows through the other ways of doing this job, each timed from its process's start
/// to its exit.
fn compare(work: &Path, rows: u64, ours: &Measured) {
    let venv = std::env::var_os("KSQL_LAKE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    let python = venv.join("bin/python");
    assert!(python.exists(), "--compare needs {}: run scripts/bench-compare", python.display());
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench");
    let ndjson = work.join("transactions.ndjson");
    let simulator = Simulator::start(rows, 1, Some(&ndjson));

    let out = work.join("python-approach");
    let python_run = timed(
        Command::new(&python)
            .arg(scripts.join("python_approach.py"))
            .args([simulator.url.as_str(), "TRANSACTIONS_1", &rows.to_string()])
            .arg(&out),
        rows,
    );
    let python_run = Measured { response_bytes: simulator.bytes, output_bytes: tree_bytes(&out), ..python_run };

    let out = work.join("duckdb");
    let duckdb_run = timed(Command::new(&python).arg(scripts.join("duckdb_copy.py")).arg(&ndjson).arg(&out), rows);
    let ndjson_bytes = std::fs::metadata(&ndjson).map(|meta| meta.len()).unwrap_or(0);
    let duckdb_run = Measured { response_bytes: ndjson_bytes, output_bytes: tree_bytes(&out), ..duckdb_run };

    println!("side by side, the same {rows} rows:");
    ours.print("ksql-lake (1 feed)");
    python_run.print("Python approach");
    duckdb_run.print("DuckDB from a file");
    let ratio = |other: &Measured| ours.rows_per_second() / other.rows_per_second();
    println!(
        "  ksql-lake is {:.2}x the Python approach (target 7x: {}) and {:.2}x DuckDB (target 1x: {})",
        ratio(&python_run),
        verdict(ratio(&python_run) >= 7.0),
        ratio(&duckdb_run),
        verdict(ratio(&duckdb_run) >= 1.0)
    );
}

/// Runs `command` to its end; panics unless it succeeds.
fn timed(command: &mut Command, rows: u64) -> Measured {
    let started = Instant::now();
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start the contender");
    let mut stderr = String::new();
    let _ = child.stderr.take().expect("its stderr").read_to_string(&mut stderr);
    let usage = wait(&mut child);
    assert!(usage.success, "{command:?} failed:\n{stderr}");
    if !stderr.trim().is_empty() {
        std::io::stderr().write_all(stderr.as_bytes()).ok();
    }
    Measured {
        rows,
        response_bytes: 0,
        output_bytes: 0,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: usage.cpu_seconds,
        peak_rss_mib: usage.peak_rss_mib,
        stand_in_cpu_seconds: None,
        age_flushes: None,
    }
}

struct Usage {
    success: bool,
    cpu_seconds: f64,
    peak_rss_mib: f64,
}

/// Reaps `child` with wait4(2), which reports that process's own CPU time and peak RSS.
fn wait(child: &mut Child) -> Usage {
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own, not yet reaped, child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4: {}", std::io::Error::last_os_error());
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    Usage {
        success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// The service's /metrics text.
fn scrape(port: u16) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The sum over feeds of the metric lines starting with `prefix`.
fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `ksql_lake_rows_received_total`, summed over feeds.
fn received_rows(metrics: &str) -> u64 {
    metric_sum(metrics, "ksql_lake_rows_received_total{") as u64
}

fn age_flushes(metrics: &str) -> AgeFlushes {
    let name = "ksql_lake_age_flush_delay_seconds";
    AgeFlushes {
        count: metric_sum(metrics, &format!("{name}_count{{")) as u64,
        within_a_second: metrics
            .lines()
            .filter(|line| line.starts_with(&format!("{name}_bucket{{")) && line.contains("le=\"1\""))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64,
        sum_seconds: metric_sum(metrics, &format!("{name}_sum{{")),
    }
}

/// `total_records` of every feed's `_metadata.json`.
fn committed_rows(lake: &Path) -> u64 {
    let Ok(feeds) = std::fs::read_dir(lake.join("streams")) else {
        return 0;
    };
    feeds
        .filter_map(|feed| std::fs::read(feed.ok()?.path().join("_metadata.json")).ok())
        .map(|text| {
            let metadata: serde_json::Value = serde_json::from_slice(&text).expect("a valid _metadata.json");
            metadata["total_records"].as_u64().expect("total_records")
        })
        .sum()
}

fn parquet_bytes(lake: &Path) -> u64 {
    files(lake).filter(|(path, _)| path.extension().is_some_and(|ext| ext == "parquet")).map(|(_, len)| len).sum()
}

fn tree_bytes(root: &Path) -> u64 {
    files(root).map(|(_, len)| len).sum()
}

/// Every file under `root` with its size.
fn files(root: &Path) -> impl Iterator<Item = (PathBuf, u64)> {
    let mut pending = vec![root.to_path_buf()];
    let mut found = Vec::new();
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => pending.push(path),
                Ok(meta) => found.push((path, meta.len())),
                Err(_) => {}
            }
        }
    }
    found.into_iter()
}
