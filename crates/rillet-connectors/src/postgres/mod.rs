//! A PostgreSQL table as an exactly-once sink, by idempotent upsert.
//!
//! Each sink task holds the rows it received until a checkpoint that covers them has been
//! committed (see [`crate::staged`]); at each barrier it hands them over as its checkpoint
//! state, and when the checkpoint completes they are upserted into the table in one
//! transaction: `INSERT ... ON CONFLICT (key) DO UPDATE`, the last row of a key winning. Recovery repeats the restored
//! checkpoint's upserts, which changes nothing if they had landed, and the replay from
//! that checkpoint rewrites the same rows for the same keys: the table ends as if the job
//! had never failed. (Going back to an *older* savepoint cannot take back upserts made
//! after it; the replay overwrites them with the same values only for a deterministic
//! pipeline.)
//!
//! The table must exist, with a primary key or unique index on the key columns; columns
//! are matched by name and values converted by PostgreSQL from JSON (`json_populate_recordset`),
//! so any column type PostgreSQL can read from JSON works.
//!
//! The sink holds one connection, opened at its first use and reused by every commit
//! (opened again after it breaks). The URL's `sslmode` and `sslrootcert` secure it as
//! libpq would (see [`tls`]).

mod tls;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use rillet_common::{Result, RilletError};
use rillet_operator::{BatchWriter, BlockingPool, Sink, SinkContext, block_on, global_runtime};
use tokio_postgres::Client;

use crate::staged::{RowsOut, StagedWriter, decode_states};
use tls::{Tls, split_tls_options};

/// Upserts into a PostgreSQL table (see the module docs).
#[derive(Debug, Clone)]
pub struct PostgresUpsertSink {
    config: tokio_postgres::Config,
    tls: Tls,
    table: String,
    key: Vec<String>,
    /// The connection commits share; `None` until the first, or after it broke.
    client: Arc<tokio::sync::Mutex<Option<Client>>>,
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// A table name, optionally schema-qualified (`schema.table`), quoted part by part.
fn quote_table(table: &str) -> String {
    table.split('.').map(quote).collect::<Vec<_>>().join(".")
}

impl PostgresUpsertSink {
    /// Upsert into `table` at `url` (`postgresql://user@host:port/db`, with
    /// `?sslmode=require` and the like for TLS) on `key` columns.
    ///
    /// ```
    /// use rillet_connectors::postgres::PostgresUpsertSink;
    /// let url = "postgresql://app@db.internal/shop?sslmode=require";
    /// assert!(PostgresUpsertSink::new(url, "orders", vec!["id".into()]).is_ok());
    /// assert!(PostgresUpsertSink::new(url, "orders", vec![]).is_err());
    /// ```
    pub fn new(url: impl Into<String>, table: impl Into<String>, key: Vec<String>) -> Result<Self> {
        if key.is_empty() {
            return Err(RilletError::invalid_argument(
                "an upsert sink needs the table's key columns",
            ));
        }
        let url = url.into();
        let (rest, sslmode, sslrootcert) = split_tls_options(&url);
        let tls = Tls::new(sslmode.as_deref(), sslrootcert.as_deref())?;
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| RilletError::invalid_argument(format!("postgres URL {rest:?}: {e}")))?;
        config.ssl_mode(tls.mode);
        // A connection a firewall dropped in silence must fail a commit in a minute, not
        // hold it (and the checkpoints behind it) for the kernel's quarter of an hour.
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(std::time::Duration::from_secs(60));
        }
        Ok(Self {
            config,
            tls,
            table: table.into(),
            key,
            client: Arc::default(),
        })
    }

    fn error(&self, what: &str, e: tokio_postgres::Error) -> RilletError {
        // The server's own message says what is wrong; the error's display alone does not,
        // and the cause (a refused certificate, a refused connection) is in its source.
        let detail = match (e.as_db_error(), std::error::Error::source(&e)) {
            (Some(db), _) => db.message().to_string(),
            (None, Some(cause)) => format!("{e}: {cause}"),
            (None, None) => e.to_string(),
        };
        RilletError::Io(std::io::Error::other(format!(
            "postgres table {}: {what}: {detail}",
            self.table
        )))
    }

    /// The shared connection, opened if there is none or it broke.
    async fn connection(&self) -> Result<tokio::sync::MappedMutexGuard<'_, Client>> {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            let (client, connection) = self
                .config
                .connect(self.tls.clone())
                .await
                .map_err(|e| self.error("connecting", e))?;
            // The connection's I/O runs on the engine's runtime, outliving this call.
            global_runtime().spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("postgres connection closed: {e}");
                }
            });
            *slot = Some(client);
        }
        Ok(tokio::sync::MutexGuard::map(slot, |slot| {
            slot.as_mut().expect("connected above")
        }))
    }

    /// The upsert of one JSON array of rows with `columns`: the last row of each key wins.
    fn statement(&self, columns: &[String]) -> String {
        let table = quote_table(&self.table);
        let cols: Vec<String> = columns.iter().map(|c| quote(c)).collect();
        let keys: Vec<String> = self.key.iter().map(|k| quote(k)).collect();
        let updates: Vec<String> = columns
            .iter()
            .filter(|c| !self.key.contains(c))
            .map(|c| format!("{0} = EXCLUDED.{0}", quote(c)))
            .collect();
        let on_conflict = if updates.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        format!(
            "INSERT INTO {table} ({cols}) \
             SELECT DISTINCT ON ({keys}) {cols} \
             FROM json_populate_recordset(NULL::{table}, $1::text::json) WITH ORDINALITY \
             ORDER BY {keys}, ordinality DESC \
             ON CONFLICT ({keys}) {on_conflict}",
            cols = cols.join(", "),
            keys = keys.join(", "),
        )
    }

    /// Upsert `batches` in one transaction.
    fn upsert(&self, batches: &[RecordBatch]) -> Result<()> {
        let Some(first) = batches.iter().find(|b| b.num_rows() > 0) else {
            return Ok(());
        };
        let columns: Vec<String> = first
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        for key in &self.key {
            if !columns.contains(key) {
                return Err(RilletError::invalid_argument(format!(
                    "upsert key {key:?} is not a column of the rows ({columns:?})"
                )));
            }
        }
        let mut json = arrow::json::ArrayWriter::new(Vec::new());
        for batch in batches {
            json.write(batch)?;
        }
        json.finish()?;
        let json = String::from_utf8(json.into_inner())
            .map_err(|e| RilletError::internal(format!("JSON of rows: {e}")))?;
        let statement = self.statement(&columns);
        block_on(async {
            let mut client = self.connection().await?;
            let transaction = client
                .transaction()
                .await
                .map_err(|e| self.error("begin", e))?;
            transaction
                .execute(statement.as_str(), &[&json])
                .await
                .map_err(|e| self.error("upsert", e))?;
            transaction
                .commit()
                .await
                .map_err(|e| self.error("commit", e))
        })
    }
}

impl RowsOut for PostgresUpsertSink {
    fn write_out(&self, _context: &SinkContext, batches: &[RecordBatch]) -> Result<()> {
        self.upsert(batches)
    }
}

#[async_trait]
impl Sink for PostgresUpsertSink {
    fn describe(&self) -> String {
        format!(
            "upsert into postgres table {} on ({})",
            self.table,
            self.key.join(", ")
        )
    }

    fn prepare(&self) -> Result<()> {
        // Fail at the start, naming the table, rather than at the first commit.
        let query = format!("SELECT * FROM {} LIMIT 0", quote_table(&self.table));
        block_on(async {
            let client = self.connection().await?;
            client
                .simple_query(&query)
                .await
                .map_err(|e| self.error("checking the table", e))
                .map(|_| ())
        })
    }

    fn open(
        &self,
        partition: usize,
        schema: SchemaRef,
        _blocking: &BlockingPool,
        context: &SinkContext,
    ) -> Result<Box<dyn BatchWriter>> {
        Ok(StagedWriter::boxed(self, schema, partition, context))
    }

    fn commit(&self, _context: &SinkContext, checkpoint: u64, states: &[Vec<u8>]) -> Result<()> {
        // Oldest segment first. On recovery a state may hold segments a commit cut short
        // had upserted: upserting that suffix of the job's rows again, in order, leaves
        // every key at its last value, as a single upsert would.
        self.upsert(&decode_states(checkpoint, states)?)
    }

    fn recover(
        &self,
        context: &SinkContext,
        checkpoint: Option<u64>,
        states: &[Vec<u8>],
    ) -> Result<()> {
        match checkpoint {
            Some(id) if id > 0 => self.commit(context, id, states),
            _ => Ok(()),
        }
    }
}

/// The upsert sink from its options (`url`, `table`, `key`).
pub(crate) fn sink_options(
    options: &mut crate::registry::Options,
    _job: &str,
) -> Result<Arc<dyn rillet_operator::Sink>> {
    let url = options.string("url")?;
    let table = options.string("table")?;
    let key = options.strings("key")?;
    Ok(Arc::new(PostgresUpsertSink::new(url, table, key)?))
}
