module tailproxy.test/goquic

go 1.24.0

require golang.org/x/net v0.48.0

require (
	golang.org/x/crypto v0.46.0 // indirect
	golang.org/x/sys v0.40.0 // indirect
)
