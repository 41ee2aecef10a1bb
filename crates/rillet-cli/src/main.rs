//! The `rillet` command line.
//!
//! ```text
//! rillet sql "SELECT city, count(*) FROM trips GROUP BY city" --table trips=data/trips/
//! rillet explain "SELECT * FROM t WHERE x > 1" --table t=t.parquet
//! ```

use clap::{Parser, Subcommand};

/// The same allocator as the Python extension (see `rillet-python`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
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
    /// Memory budget for in-flight data, in MiB.
    #[arg(long, global = true, default_value_t = 512)]
    memory_mib: usize,
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
            session.read(format_of(path), &[path.clone()])?,
        ));
    }
    session.sql(query, &frames)
}

fn main() {
    rillet_runtime::allocator::tune();
    let cli = Cli::parse();
    let session = Session::new(EngineConfig::default().with_memory_budget(cli.memory_mib << 20));
    let result = match &cli.command {
        Command::Sql { query, tables } => plan(&session, query, tables).and_then(|df| {
            let batches = df.collect()?;
            println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
            Ok(())
        }),
        Command::Explain { query, tables } => plan(&session, query, tables).and_then(|df| {
            println!("{}", df.explain()?);
            Ok(())
        }),
    };
    if let Err(error) = result {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}
