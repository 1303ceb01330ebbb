//! A static website: serves the files the Dockerfile copies to /www (from the `site` stage)
//! over HTTP on port 80.
#![no_std]
#![no_main]

use imgbuild_unikernel::{http, println, Runtime};

imgbuild_unikernel::main!(app_main);

const PORT: u16 = 80;
const ROOT: &str = "/www";

fn app_main(rt: &mut Runtime) -> i32 {
    if !rt.fs().metadata(ROOT).is_some_and(|m| m.is_dir()) {
        println!("static-site: {ROOT} is missing (COPY the site to {ROOT}/)");
        return 1;
    }
    let e = http::serve(rt, PORT, ROOT);
    println!("static-site: cannot serve on port {PORT}: {e:?}");
    1
}
