//! The "pong" server of the container-linking demo: every TCP connection to port 12345 gets
//! "pong\n" and is closed.
#![no_std]
#![no_main]

use imgbuild_unikernel::tcp::TcpListener;
use imgbuild_unikernel::{println, Runtime};

imgbuild_unikernel::main!(app_main);

const PORT: u16 = 12345;

fn app_main(rt: &mut Runtime) -> i32 {
    rt.net(); // brings the network up (prints the address) before announcing the port
    let mut listener = match TcpListener::bind(PORT) {
        Ok(l) => l,
        Err(e) => {
            println!("pong: cannot listen on {PORT}: {e:?}");
            return 1;
        }
    };
    println!("pong: listening on {PORT} ({} ms after boot)", rt.now().as_millis());
    loop {
        let mut conn = listener.accept();
        // A client that is already gone only loses its own answer.
        let _ = conn.write_all(b"pong\n");
        conn.close();
    }
}
