package lockengine_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/dirlock"
)

// A Queue over the dir backend: acquire a name exclusively, pass the
// fencing token to what the lock protects, release it. The next exclusive
// grant carries a larger token.
func ExampleQueue() {
	dir, err := os.MkdirTemp("", "lockengine-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	backend, err := dirlock.Open(dir, dirlock.Options{})
	if err != nil {
		log.Fatal(err)
	}
	q := lockengine.NewQueue(backend, lockengine.QueueOptions{})
	defer q.Close() // closes the backend too

	ctx := context.Background()
	l, err := q.Acquire(ctx, "deploy", lockengine.Exclusive)
	if err != nil {
		log.Fatal(err)
	}
	// The holder passes l.Token() to the resources it protects, so they
	// can refuse a stale holder. The dir backend's tokens start above
	// epoch<<32, and its first Open on a directory is epoch 1.
	fmt.Println("held:", l.Name(), l.Mode(), "token", l.Token(), "err", l.Err())
	if err := l.Release(); err != nil {
		log.Fatal(err)
	}

	l, err = q.Acquire(ctx, "deploy", lockengine.Exclusive)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("held again: token", l.Token())
	if err := l.Release(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("after release:", l.Err())
	// Output:
	// held: deploy exclusive token 4294967297 err <nil>
	// held again: token 4294967298
	// after release: lockengine: lease released
}
