mod avoid;
mod bases;
mod bench;
mod build;
mod by_digest;
mod catalog;
mod cli;
mod context;
mod docker;
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
    let result =
        context::Ctx::new(root, cli.command.run_options()).and_then(|ctx| run(cli.command, &ctx));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // One line: the chain of contexts, never a backtrace.
            eprintln!("error: {}", format!("{error:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command, ctx: &context::Ctx) -> anyhow::Result<()> {
    match command {
        Command::Images(images) => match *images {
            ImagesCommand::List(args) => args.run(ctx),
            ImagesCommand::Render(args) => args.run(ctx),
            ImagesCommand::Build(args) => (*args).run(ctx),
            ImagesCommand::Merge(args) => args.run(ctx),
            ImagesCommand::Mirror(args) => (*args).run(ctx),
            ImagesCommand::Retag(args) => args.run(ctx),
            ImagesCommand::Size(args) => args.run(ctx),
            ImagesCommand::Verify(args) => args.run(ctx),
            ImagesCommand::Tools(args) => args.run(ctx),
            ImagesCommand::New(args) => args.run(ctx),
            ImagesCommand::Sbom(args) => args.run(ctx),
            ImagesCommand::Bases(args) => args.run(ctx),
        },
        Command::Bench(bench) => match *bench {
            BenchCommand::Mirror(args) => args.run(ctx),
            BenchCommand::Build(args) => args.run(ctx),
        },
    }
}
