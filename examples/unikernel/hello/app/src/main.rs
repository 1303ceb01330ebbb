//! The imgbuild unikernel example: a greeting, the arguments (the Dockerfile's CMD unless the
//! command line gives others) and a file baked in by COPY.
#![no_std]
#![no_main]

use imgbuild_unikernel::{print, println, Runtime};

imgbuild_unikernel::main!(app_main);

fn app_main(rt: &mut Runtime) -> i32 {
    println!("Hello from an imgbuild unikernel!");
    print!("args:");
    for arg in rt.args() {
        print!(" {arg}");
    }
    println!();
    match rt.fs().read("/greeting.txt") {
        Some(text) => print!("{}", core::str::from_utf8(text).unwrap_or("(not UTF-8)\n")),
        None => {
            println!("/greeting.txt is missing");
            return 1;
        }
    }
    0
}
