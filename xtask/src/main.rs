mod bench;
mod build;
mod catalog;
mod cli;
mod docker;
mod list;
mod mirror;
mod naming;
mod new;
mod oci;
mod plan;
mod project;
mod render;
mod report;
mod size;
mod text;
mod tools;
mod verify;

use clap::Parser;
use cli::{BenchCommand, Cli, Command, ImagesCommand};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let root = cli
        .project_dir
        .clone()
        .unwrap_or_else(project::project_root);
    let result = match &cli.command {
        Command::Images(images) => match images.as_ref() {
            ImagesCommand::List(args) => list::run(&root, args.json),
            ImagesCommand::Render(args) => build::run_render(&root, args),
            ImagesCommand::Build(args) => build::run_build(&root, args),
            ImagesCommand::Mirror(args) => mirror::run(&root, args),
            ImagesCommand::Retag(args) => mirror::retag::run(args),
            ImagesCommand::Size(args) => size::run(&root, args),
            ImagesCommand::Verify(args) => verify::run(&root, args),
            ImagesCommand::Tools(args) => tools::run(&root, args),
            ImagesCommand::New(args) => new::run(&root, args),
        },
        Command::Bench(bench) => match bench.as_ref() {
            BenchCommand::Mirror(args) => bench::run(&root, args),
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // One line: the chain of contexts, never a backtrace.
            eprintln!("error: {}", format!("{error:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}
