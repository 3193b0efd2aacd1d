//! The `mtl` command line: the only place that prints.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
