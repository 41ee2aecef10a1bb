//! A Rillet session: engine configuration plus the DataFusion context that plans for it.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::prelude::{SessionConfig, SessionContext};
use rillet_common::EngineConfig;

use crate::frame_downscale::FuseFrameDownscale;
use crate::stage::BatchStagePlanner;
use crate::udf::registered_function;

/// Configuration and planning context shared by the DataFrames built from it.
///
/// ```
/// use rillet_common::EngineConfig;
/// let session = rillet_plan::Session::new(EngineConfig::default().with_parallelism(2));
/// assert_eq!(session.config().parallelism, 2);
/// ```
#[derive(Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
}

struct SessionInner {
    config: EngineConfig,
    ctx: SessionContext,
}

impl Default for Session {
    fn default() -> Self {
        Self::new(EngineConfig::default())
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("config", &self.inner.config)
            .finish()
    }
}

/// Plans Rillet's stage nodes next to DataFusion's own.
#[derive(Debug)]
struct RilletQueryPlanner;

#[async_trait]
impl QueryPlanner for RilletQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn datafusion::catalog::Session,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![
            Arc::new(BatchStagePlanner),
            Arc::new(crate::streaming::StreamStepPlanner),
        ])
        .create_physical_plan(logical_plan, session_state)
        .await
    }
}

impl Session {
    /// A session with `config`, planning the functions registered so far by name (see
    /// [`register_functions`](crate::register_functions)).
    pub fn new(config: EngineConfig) -> Self {
        let mut df_config = SessionConfig::new()
            .with_target_partitions(config.parallelism)
            .with_batch_size(config.batch_size)
            .with_information_schema(false);
        // Keep the Arrow schema embedded in Parquet files: multimodal columns are extension
        // types whose identity lives in field metadata.
        df_config.options_mut().execution.parquet.skip_metadata = false;
        // DataFusion's operators (sort, join, aggregate) account their state against the
        // same budget and spill sorts to disk when it runs out.
        // Directories are listed afresh on every read: a job may read what the previous
        // one wrote (and, later, directories that keep receiving files).
        let caches = CacheManagerConfig::default().with_list_files_cache_limit(0);
        let runtime = RuntimeEnvBuilder::new()
            .with_cache_manager(caches)
            .with_memory_limit(config.memory_budget_bytes.max(64 << 20), 1.0)
            .build_arc()
            .expect("runtime environment with a memory limit");
        let state = SessionStateBuilder::new()
            .with_config(df_config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_query_planner(Arc::new(RilletQueryPlanner))
            .with_optimizer_rule(Arc::new(FuseFrameDownscale))
            .build();
        let ctx = SessionContext::new_with_state(state);
        // The operators the embedding program registered (image, audio, text, models), by
        // SQL name, for SQL and the DataFrame alike.
        for function in crate::registry::registered_functions() {
            ctx.register_udf(registered_function(function));
        }
        Self {
            inner: Arc::new(SessionInner { config, ctx }),
        }
    }

    /// The engine configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The DataFusion context that plans this session's queries.
    pub fn context(&self) -> &SessionContext {
        &self.inner.ctx
    }

    /// Run a future to completion on the engine's runtime (planning steps that read file
    /// metadata are async).
    pub(crate) fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        let runtime = rillet_runtime::global_runtime();
        match tokio::runtime::Handle::try_current() {
            // Called from inside the runtime (a test or a UDF): don't nest block_on.
            Ok(_) => tokio::task::block_in_place(|| runtime.block_on(future)),
            Err(_) => runtime.block_on(future),
        }
    }
}
