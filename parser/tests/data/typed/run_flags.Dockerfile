FROM alpine
RUN --network=none echo isolated
RUN --network=host --security=insecure echo host
RUN --network=default --security=sandbox echo defaults
RUN --network=bridge echo bad network
RUN --security=privileged echo bad security
RUN --device=vendor.com/gpu=all,required echo device
RUN --device=name=a,name=b echo bad device
RUN --cache=never date > /now
RUN --cache=ttl=1h30m apt-get update
RUN --cache=ttl=10s echo ttl
RUN --cache=always echo bad cache
RUN --cache=ttl=5 echo missing unit
RUN --cache=ttl=-1m echo negative ttl
RUN --cache=never --cache=ttl=1h echo twice
RUN --netwrk=none echo typo
