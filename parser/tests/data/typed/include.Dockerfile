INCLUDE globals.Dockerfile
FROM alpine
INCLUDE steps.Dockerfile
INCLUDE a.Dockerfile b.Dockerfile
INCLUDE
