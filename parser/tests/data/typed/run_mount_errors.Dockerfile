FROM alpine AS base
RUN --mount=type=bnid,target=/x echo bad type
RUN --mount=type=cache,target=/x,sharing=privat echo bad sharing
RUN --mount=type=bind,target=/x,required echo required on bind
RUN --mount=type=cache,target=/x,size=1g echo size on cache
RUN --mount=type=tmpfs,target=/x,size=lots echo bad size
RUN --mount=target=/x,trget=/y echo typo key
RUN --mount=target=/x,z echo bare field
RUN --mount=type=bind,target=/x,mode=0755,uid=1 echo file info on bind
RUN --mount=type=cache,target=/x,mode=0999,uid=-1,gid=x echo bad numbers
RUN --mount=type=secret echo secret without id
RUN --mount=type=secret,id=a,source=b,from=base,sharing=shared echo bad secret
RUN --mount=type=tmpfs,target=/x,sharing=shared echo sharing on tmpfs
RUN --mount=type=ssh,source=/key echo ssh source
RUN --mount=type=cache,target=/ echo root target
RUN --mount=type=cache,target=/x,ro=maybe echo bad bool
RUN --mount=from=$STAGE,target=/x echo variable from
RUN --mount= echo empty
RUN --mount=type=cache,target=$DIR,mode=$MODE echo variables are checked later
