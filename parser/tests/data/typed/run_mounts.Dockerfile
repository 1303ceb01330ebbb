FROM alpine AS base
RUN touch /x

FROM alpine
RUN --mount=target=/src echo default bind
RUN --mount=type=bind,source=/x,target=/mnt/x,from=base,rw echo bind from stage
RUN --mount=type=bind,src=.,dst=/ctx,readonly echo bind aliases
RUN --mount=type=cache,target=/root/.cache,id=gocache,sharing=locked,mode=0700,uid=1000,gid=1000 echo cache
RUN --mount=type=cache,destination=/var/cache/apt,sharing=private,ro=false,from=base,source=/tmp echo cache from
RUN --mount=type=tmpfs,target=/tmp,size=64m echo tmpfs
RUN --mount=type=secret,id=aws,target=/root/.aws/credentials,required=true,mode=0400,uid=0,gid=0 echo secret file
RUN --mount=type=secret,id=API_KEY,env=API_KEY echo secret env
RUN --mount=type=secret,source=token.txt echo secret source
RUN --mount=type=ssh echo ssh default
RUN --mount=type=ssh,id=gitlab,target=/run/ssh,required,mode=0600 echo ssh
RUN --mount=type=cache,target=/c --mount=type=tmpfs,target=/t --mount=type=secret,id=s echo several
