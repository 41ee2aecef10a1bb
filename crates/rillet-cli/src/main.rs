//! The `rillet` binary: see [`rillet_cli`].

/// The same allocator as the Python extension (see `rillet-python`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    rillet_runtime::allocator::tune();
    std::process::exit(rillet_cli::run(std::env::args()));
}
