# syntax=docker.io/docker/dockerfile:1.7-labs
FROM unikernel
MODULE net
