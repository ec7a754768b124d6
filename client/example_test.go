package client_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"os"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/client"
	"github.com/sandstorm-dev/sandstorm/runstore"
)

// Run an agent and print what it does as it does it.
func ExampleClient_Query() {
	c := client.New("http://127.0.0.1:8000", os.Getenv("SANDSTORM_API_KEY"))
	id, err := c.Query(context.Background(), api.Request{Prompt: "Create hello.py and run it"}, func(seq int64, ev json.RawMessage) error {
		var m struct{ Type string }
		json.Unmarshal(ev, &m)
		fmt.Println(seq, m.Type)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("run", id)
}

// Start a run that outlives this program, and follow it: a dropped
// connection is resumed from the last event, nothing lost or twice.
func ExampleClient_Follow() {
	ctx := context.Background()
	c := client.New("http://127.0.0.1:8000", os.Getenv("SANDSTORM_API_KEY"))
	run, err := c.Detach(ctx, api.Request{Prompt: "Summarise the files", Files: map[string]string{"notes.txt": "..."}})
	if err != nil {
		log.Fatal(err)
	}
	err = c.Follow(ctx, run.ID, 0, func(seq int64, ev json.RawMessage) error {
		fmt.Printf("%d %s\n", seq, ev)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	done, _ := c.Get(ctx, run.ID)
	fmt.Println(done.Status, done.TotalCostUSD)
}

// Download what a run's agent made.
func ExampleClient_OpenFile() {
	ctx := context.Background()
	c := client.New("http://127.0.0.1:8000", os.Getenv("SANDSTORM_API_KEY"))
	files, err := c.Files(ctx, "run-18ed555db05392346278b987")
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range files {
		rc, _, err := c.OpenFile(ctx, "run-18ed555db05392346278b987", f.Path)
		if err != nil {
			log.Fatal(err)
		}
		out, _ := os.Create(f.Path)
		io.Copy(out, rc)
		rc.Close()
		out.Close()
	}
}

// Cancel every run still going.
func ExampleClient_List() {
	ctx := context.Background()
	c := client.New("http://127.0.0.1:8000", os.Getenv("SANDSTORM_API_KEY"))
	page, err := c.List(ctx, runstore.Filter{Status: []api.RunStatus{api.StatusRunning}, Limit: 100})
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range page.Runs {
		if _, err := c.Cancel(ctx, r.ID); err != nil {
			log.Print(err)
		}
	}
}
