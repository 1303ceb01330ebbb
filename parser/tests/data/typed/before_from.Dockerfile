# The ARG before FROM is fine; the rest is not.
ARG BASE=alpine
RUN echo too early
ENV A=1
FROM $BASE
RUN echo fine
