FROM rust:1.80 AS build
RUN cargo build --release

# kernel boots the web server
FROM unikernel AS kernel
ARG PORT=8080
ENV RUST_LOG=info
LABEL org.opencontainers.image.title=web
COPY --from=build /target/release/web /app/web
ADD static.tar /www/
APP /app/web
MODULE net fs-ramdisk virtio-net
MODULE clock
EXPOSE 8080/tcp
CMD ["--port", "8080"]

# A unikernel stage built on another one is a unikernel too.
FROM kernel AS kernel-debug
MODULE debug-console
APP /app/web-debug
