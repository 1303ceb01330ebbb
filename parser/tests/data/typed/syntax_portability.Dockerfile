# syntax=docker/dockerfile:1
FROM alpine AS build
INCLUDE common.Dockerfile
RUN --cache=never date
RUN --mount=type=cache,target=/c echo plain buildkit flags are fine

FROM unikernel AS kernel
APP /app
MODULE net
