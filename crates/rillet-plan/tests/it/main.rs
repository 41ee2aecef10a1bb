//! Integration tests of the planning layer and the runtime together: one test binary with
//! modules, so the tests link once instead of once per file (faster builds, a smaller target
//! directory).

mod compat;
mod execution;
mod operations;
mod power;
mod sinks;
mod streaming;

use rillet_common::EngineConfig;
use rillet_plan::Session;

/// A session with `config` that plans the built-in operators, which the embedding program
/// (the Python module, the CLI) registers in a real run.
fn session(config: EngineConfig) -> Session {
    static BUILTINS: std::sync::Once = std::sync::Once::new();
    BUILTINS.call_once(|| {
        rillet_plan::register_functions(
            rillet_functions::functions()
                .into_iter()
                .chain(rillet_ai::functions()),
        )
    });
    Session::new(config)
}

/// [`session`] with the default configuration.
fn default_session() -> Session {
    session(EngineConfig::default())
}
