# check=skip=JSONArgsRecommended,LegacyKeyValueFormat;error=true
FROM alpine AS Base
CMD echo skipped
ENV A 1
WORKDIR relative
