# check=skip=all
FROM alpine AS Base
CMD echo skipped
COPY $UNDEFINED /x
COPY --from=nosuchstage /a /b
