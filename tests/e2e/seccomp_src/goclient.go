// A Go test client for tailproxy's seccomp interception (tests/e2e/test_seccomp.py), built
// by the test with and without cgo. Standard library only.
//
//	goclient get URL           HTTP GET through net/http, the body on stdout
//	goclient echo ADDR MSG     dial ADDR (host:port, a name or an IP), send MSG and a newline,
//	                           print the line that comes back
//	goclient many ADDR N       N dials at once (non-blocking connects, as every Go dial),
//	                           each echoing its own line; "ok N" when all came back
//	goclient env NAME          the variable's value, or "(unset)"
//	goclient serve PORT        an HTTP server on :PORT (all addresses) answering "go says hi"
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
)

func echo(addr, msg string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 20*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return line[:len(line)-1], nil
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: goclient get URL | echo ADDR MSG | many ADDR N | env NAME | serve PORT")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "get":
		client := &http.Client{Timeout: 30 * time.Second}
		r, err := client.Get(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer r.Body.Close()
		io.Copy(os.Stdout, r.Body)
	case "echo":
		line, err := echo(os.Args[2], os.Args[3])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(line)
	case "many":
		n, _ := strconv.Atoi(os.Args[3])
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				msg := "dial " + strconv.Itoa(i)
				line, err := echo(os.Args[2], msg)
				if err == nil && line != msg {
					err = fmt.Errorf("dial %d: got %q", i, line)
				}
				errs <- err
			}(i)
		}
		wg.Wait()
		close(errs)
		bad := 0
		for err := range errs {
			if err != nil {
				bad++
				fmt.Fprintln(os.Stderr, err)
			}
		}
		if bad > 0 {
			os.Exit(1)
		}
		fmt.Println("ok", n)
	case "serve":
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "go says hi\n")
		})
		if err := http.ListenAndServe(":"+os.Args[2], nil); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	case "env":
		if v, ok := os.LookupEnv(os.Args[2]); ok {
			fmt.Println(v)
		} else {
			fmt.Println("(unset)")
		}
	default:
		os.Exit(2)
	}
}
