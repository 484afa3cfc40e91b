// Command tally-usage publishes tally usage events from Go.
//
// Two ways in, both shown here:
//   - Kafka (franz-go): one msgpack map per event on billing.usage, keyed by
//     the tenant id, with the CloudEvents headers (schemas/usage-event.md);
//   - HTTP: POST a JSON array of events to tally-relay's /v1/events with the
//     tenant's API key.
//
// Every event needs a stable id (unique per source): re-sending the same
// event after a failure is safe, tally counts it once.
//
//	go run . -mode kafka -brokers 127.0.0.1:9092 -tenant UUID -count 100
//	go run . -mode http -url http://127.0.0.1:8080 -key tk_... -tenant UUID
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/vmihailenco/msgpack/v5"
)

// AIData is the data of an ai.tokens event.
type AIData struct {
	Provider        string `msgpack:"provider" json:"provider"`
	Model           string `msgpack:"model" json:"model"`
	InputTokens     int64  `msgpack:"input_tokens" json:"input_tokens"` // includes the cached part
	OutputTokens    int64  `msgpack:"output_tokens" json:"output_tokens"`
	CacheReadTokens int64  `msgpack:"cache_read_tokens" json:"cache_read_tokens"`
}

// Event is one usage event; Time is unix milliseconds, UTC.
type Event struct {
	ID       string `msgpack:"id" json:"id"`
	Source   string `msgpack:"source" json:"source"`
	Type     string `msgpack:"type" json:"type"`
	TenantID string `msgpack:"tenant_id" json:"tenant_id"`
	Time     int64  `msgpack:"time" json:"time"`
	Subject  string `msgpack:"subject,omitempty" json:"subject,omitempty"`
	Data     AIData `msgpack:"data" json:"data"`
}

// aiEvent is event i of the sample workload (see the test's totals).
func aiEvent(tenant, source string, i int64, baseMs int64) Event {
	return Event{
		ID: fmt.Sprintf("req-%d", i), Source: source, Type: "ai.tokens",
		TenantID: tenant, Time: baseMs + i*1000,
		Subject: fmt.Sprintf("user-%d", i%5),
		Data: AIData{Provider: "openai", Model: "gpt-4o",
			InputTokens: 100 + i, OutputTokens: 10 + i%7,
			CacheReadTokens: (i % 3) * 10},
	}
}

// record builds the Kafka record: key, msgpack value, CloudEvents headers.
func record(topic string, ev Event) (*kgo.Record, error) {
	value, err := msgpack.Marshal(&ev)
	if err != nil {
		return nil, err
	}
	t := time.UnixMilli(ev.Time).UTC().Format("2006-01-02T15:04:05.000Z")
	return &kgo.Record{
		Topic: topic, Key: []byte(ev.TenantID), Value: value,
		Headers: []kgo.RecordHeader{
			{Key: "ce_specversion", Value: []byte("1.0")},
			{Key: "ce_id", Value: []byte(ev.ID)},
			{Key: "ce_source", Value: []byte(ev.Source)},
			{Key: "ce_type", Value: []byte(ev.Type)},
			{Key: "ce_time", Value: []byte(t)},
			{Key: "content-type", Value: []byte("application/msgpack")},
		},
	}, nil
}

// sendKafka produces every event and waits until each is acknowledged by all
// in-sync replicas (franz-go's default: idempotent, acks=all).
func sendKafka(brokers, topic string, events []Event) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		return err
	}
	defer cl.Close()
	recs := make([]*kgo.Record, 0, len(events))
	for _, ev := range events {
		r, err := record(topic, ev)
		if err != nil {
			return err
		}
		recs = append(recs, r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// a failed record is not billed yet: re-send it (same id) later
	return cl.ProduceSync(ctx, recs...).FirstErr()
}

// sendHTTP posts events in batches of 100; 207 lists rejected events.
func sendHTTP(url, key string, events []Event) error {
	for k := 0; k < len(events); k += 100 {
		end := min(k+100, len(events))
		body, err := json.Marshal(events[k:end])
		if err != nil {
			return err
		}
		req, err := http.NewRequest("POST", url+"/v1/events", bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err // retry the batch: tally dedupes by (source, id)
		}
		answer, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			return fmt.Errorf("status %d: %s", resp.StatusCode, answer)
		}
	}
	return nil
}

func main() {
	mode := flag.String("mode", "kafka", "kafka or http")
	tenant := flag.String("tenant", "", "tenant id (UUID)")
	count := flag.Int64("count", 100, "events")
	resend := flag.Int("resend", 0, "send the first N events a second time")
	source := flag.String("source", "go-engine", "event source")
	baseMs := flag.Int64("base-ms", 1764547200000, "time of event 0, unix ms")
	brokers := flag.String("brokers", "127.0.0.1:9092", "Kafka brokers")
	topic := flag.String("topic", "billing.usage", "usage topic")
	url := flag.String("url", "", "tally-relay base URL")
	key := flag.String("key", "", "API key")
	flag.Parse()

	events := make([]Event, 0, *count+int64(*resend))
	for i := int64(0); i < *count; i++ {
		events = append(events, aiEvent(*tenant, *source, i, *baseMs))
	}
	events = append(events, events[:*resend]...)
	var err error
	if *mode == "kafka" {
		err = sendKafka(*brokers, *topic, events)
	} else {
		err = sendHTTP(*url, *key, events)
	}
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("go: sent %d events (%s)\n", len(events), *mode)
}
