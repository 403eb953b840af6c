mod build;
mod catalog;
mod cli;
mod list;
mod mirror;
mod naming;
mod plan;
mod project;
mod render;
mod report;

use clap::Parser;
use cli::{Cli, Command, ImagesCommand};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let root = cli
        .project_dir
        .clone()
        .unwrap_or_else(project::project_root);
    let result = match &cli.command {
        Command::Images(ImagesCommand::List(args)) => list::run(&root, args.json),
        Command::Images(ImagesCommand::Render(args)) => build::run_render(&root, args),
        Command::Images(ImagesCommand::Build(args)) => build::run_build(&root, args),
        Command::Images(ImagesCommand::Mirror(args)) => mirror::run(&root, args),
        Command::Images(ImagesCommand::Retag(args)) => mirror::retag::run(args),
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
