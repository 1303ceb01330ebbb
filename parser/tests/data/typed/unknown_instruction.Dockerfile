FROM alpine
RUNN echo typo
COPPY a b
foo bar
ENTRYPIONT ["x"]
XYZZY plugh
