//! panic: prints `panicked at FILE:LINE: MESSAGE` on the console and exits with code 101.

/// The exit code of a panicking app.
pub const PANIC_EXIT_CODE: i32 = 101;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    #[cfg(feature = "console")]
    match info.location() {
        Some(loc) => crate::println!("panicked at {}:{}: {}", loc.file(), loc.line(), info.message()),
        None => crate::println!("panicked: {}", info.message()),
    }
    let _ = info;
    crate::exit::exit(PANIC_EXIT_CODE)
}
