//! The nixboot binary: dispatch to the parse child or the CLI; no logic.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == nixboot::sandbox::CHILD_ARG) {
        let json = args.get(2).and_then(|a| a.to_str()).unwrap_or("");
        return nixboot::sandbox::child_main(json);
    }
    nixboot::cli::main(args)
}
