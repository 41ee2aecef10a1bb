//! The `rillet` command line, as a library so that the Python package runs the very same
//! code as its `rillet` command (`python -m rillet`).
//!
//! ```text
//! rillet sql "SELECT city, count(*) FROM trips GROUP BY city" --table trips=data/trips/
//! rillet explain "SELECT * FROM t WHERE x > 1" --table t=t.parquet
//! rillet list chk/                      # the streaming jobs checkpointing into chk/
//! rillet stop chk/ orders               # stop job `orders` with a savepoint
//! rillet resume chk/ orders             # run its program again, from that savepoint
//! ```

mod jobs;
pub mod logs;

use clap::{Parser, Subcommand};
use rillet_common::{EngineConfig, RilletError};
use rillet_plan::{ReadFormat, Session};

#[derive(Parser)]
#[command(
    name = "rillet",
    version,
    about = "Rillet: a dataflow engine for multimodal data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Memory budget for in-flight data, in MiB (default: 1/16 of the memory the process
    /// may use, between 512 MiB and 4 GiB).
    #[arg(long, global = true)]
    memory_mib: Option<usize>,
    /// How events (checkpoints aborted, retries, workers replaced) are written to stderr;
    /// which are kept comes from RILLET_LOG or RUST_LOG (`warn,rillet_runtime=debug`).
    #[arg(long, global = true, value_enum, default_value_t = logs::LogFormat::Human, env = "RILLET_LOG_FORMAT")]
    log_format: logs::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run a SQL query and print the result.
    Sql {
        /// The query.
        query: String,
        /// Tables as NAME=PATH (Parquet, CSV or JSON lines, by extension; a directory is
        /// read as Parquet).
        #[arg(long = "table", value_parser = parse_table)]
        tables: Vec<(String, String)>,
    },
    /// Print the logical plan and the physical dataflow of a SQL query.
    Explain {
        /// The query.
        query: String,
        /// Tables as NAME=PATH.
        #[arg(long = "table", value_parser = parse_table)]
        tables: Vec<(String, String)>,
    },
    /// List the streaming jobs that checkpoint into a directory or s3:// prefix.
    ///
    /// Each job's state (running, finished, stopped, cancelled, failed, or lost: a run
    /// killed without a trace), its process, newest snapshot and when it last reported.
    List {
        /// The jobs' checkpoint_dir.
        checkpoint_dir: String,
        /// Print JSON (one array of jobs) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop a running job with a savepoint and print the savepoint's path.
    ///
    /// Works from any process that can reach the job's checkpoint directory: the job
    /// polls it for the request twice a second.
    Stop {
        /// The job's checkpoint_dir.
        checkpoint_dir: String,
        /// The job id.
        job: String,
        /// Seconds to wait for the savepoint.
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
        /// Leave the request and return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// Run a stopped or crashed job's program again, resuming the job.
    ///
    /// Runs the command line its last run recorded, in the same directory (or the
    /// program given after `--`). The job resumes from its newest valid snapshot, or from
    /// the one given with --from. The recorded command comes from <checkpoint_dir>/<job>/
    /// _job.json: whoever can write the checkpoint location chooses what this runs.
    Resume {
        /// The job's checkpoint_dir.
        checkpoint_dir: String,
        /// The job id.
        job: String,
        /// A snapshot of the job to resume from instead of the newest: its path, or its
        /// directory name (savepoint-<id>, chk-<id>).
        #[arg(long = "from")]
        from: Option<String>,
        /// Run the program in the background, its output going to --log, and return
        /// once the job is running.
        #[arg(long)]
        detach: bool,
        /// With --detach: where the program's output goes (default <job>.log in the
        /// program's directory).
        #[arg(long)]
        log: Option<String>,
        /// Resume although the last run, on another host, may still be going (it stopped
        /// reporting but cannot be checked from here).
        #[arg(long)]
        force: bool,
        /// The program to run instead of the recorded one.
        #[arg(last = true)]
        command: Vec<String>,
    },
}

fn parse_table(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(n, p)| (n.to_string(), p.to_string()))
        .ok_or_else(|| format!("expected NAME=PATH, got '{text}'"))
}

fn format_of(path: &str) -> ReadFormat {
    if path.ends_with(".csv") {
        ReadFormat::Csv
    } else if path.ends_with(".json") || path.ends_with(".jsonl") {
        ReadFormat::Json
    } else {
        ReadFormat::Parquet
    }
}

fn plan(
    session: &Session,
    query: &str,
    tables: &[(String, String)],
) -> Result<rillet_plan::DataFrame, RilletError> {
    let mut frames = Vec::new();
    for (name, path) in tables {
        frames.push((
            name.as_str(),
            session.read(format_of(path), std::slice::from_ref(path))?,
        ));
    }
    session.sql(query, &frames)
}

/// Every streaming job checkpointing into `location` (a directory or `s3://` prefix),
/// as the JSON array `rillet list --json` prints; the error says what went wrong.
pub fn jobs_json(location: &str) -> Result<String, String> {
    jobs::jobs_json(location)
        .map(|jobs| serde_json::Value::Array(jobs).to_string())
        .map_err(|e| e.to_string())
}

/// Make the built-in operators (image, audio, video, text, documents, models) known by
/// name to every session created after this: the planner knows none itself. The `rillet`
/// command and the Python module call it once at start.
///
/// ```
/// rillet_cli::register_builtin_functions();
/// let session = rillet_plan::Session::default();
/// assert!(session.context().state().scalar_functions().contains_key("image_decode"));
/// assert!(session.context().state().scalar_functions().contains_key("embed_text"));
/// ```
pub fn register_builtin_functions() {
    rillet_plan::register_functions(
        rillet_functions::functions()
            .into_iter()
            .chain(rillet_ai::functions()),
    );
}

/// Run the command line `args` (the program's name first) and return its exit status:
/// 0 on success, 1 on an error (printed to stderr), 2 for bad usage, or the status of the
/// program `rillet resume` ran.
pub fn run(args: impl IntoIterator<Item = String>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version are printed to stdout and succeed; usage errors do not.
            let _ = e.print();
            return e.exit_code();
        }
    };
    logs::install(cli.log_format);
    register_builtin_functions();
    let mut config = EngineConfig::default();
    if let Some(mib) = cli.memory_mib {
        config = config.with_memory_budget(mib << 20);
    }
    let result: jobs::Outcome<i32> = match cli.command {
        Command::Sql { query, tables } => {
            let session = Session::new(config);
            plan(&session, &query, &tables)
                .and_then(|df| {
                    let batches = df.collect()?;
                    println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
                    Ok(0)
                })
                .map_err(Into::into)
        }
        Command::Explain { query, tables } => {
            let session = Session::new(config);
            plan(&session, &query, &tables)
                .and_then(|df| {
                    println!("{}", df.explain()?);
                    Ok(0)
                })
                .map_err(Into::into)
        }
        Command::List {
            checkpoint_dir,
            json,
        } => jobs::list(&checkpoint_dir, json).map(|()| 0),
        Command::Stop {
            checkpoint_dir,
            job,
            timeout,
            no_wait,
        } => jobs::stop(&checkpoint_dir, &job, (!no_wait).then_some(timeout)).map(|()| 0),
        Command::Resume {
            checkpoint_dir,
            job,
            from,
            detach,
            log,
            force,
            command,
        } => jobs::resume(
            &checkpoint_dir,
            &job,
            &jobs::ResumeOptions {
                from,
                detach,
                log,
                command,
                force,
            },
        ),
    };
    match result {
        Ok(status) => status,
        Err(error) => {
            eprintln!("error: {error}");
            1
        }
    }
}
