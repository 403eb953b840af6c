mod avoid;
mod bases;
mod bench;
mod build;
mod by_digest;
mod catalog;
mod cli;
mod docker;
mod index;
mod inputs;
mod list;
mod merge;
mod mirror;
mod naming;
mod new;
mod oci;
mod plan;
mod preflight;
mod project;
mod render;
mod report;
mod sbom;
mod sign;
mod size;
mod text;
mod tools;
mod trust;
mod verify;

use clap::Parser;
use cli::{BenchCommand, Cli, Command, ImagesCommand};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let root = cli.project_dir.unwrap_or_else(project::project_root);
    let result = match cli.command {
        Command::Images(images) => match *images {
            ImagesCommand::List(args) => args.run(&root),
            ImagesCommand::Render(args) => args.run(&root),
            ImagesCommand::Build(args) => (*args).run(&root),
            ImagesCommand::Merge(args) => args.run(&root),
            ImagesCommand::Mirror(args) => (*args).run(&root),
            ImagesCommand::Retag(args) => args.run(&root),
            ImagesCommand::Size(args) => args.run(&root),
            ImagesCommand::Verify(args) => args.run(&root),
            ImagesCommand::Tools(args) => args.run(&root),
            ImagesCommand::New(args) => args.run(&root),
            ImagesCommand::Sbom(args) => args.run(&root),
            ImagesCommand::Bases(args) => args.run(&root),
        },
        Command::Bench(bench) => match *bench {
            BenchCommand::Mirror(args) => args.run(&root),
            BenchCommand::Build(args) => args.run(&root),
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
