// Deletes consumer groups (the Connect sink's group of a finished run). Run
// by ops/bench-peer with Java's source launcher and the worker's jars:
//   java -cp 'worker/*' ops/bench-peer.d/DeleteGroups.java BOOTSTRAP GROUP...
// Exit status 0 when every group is gone afterwards (or never existed).
import java.util.Arrays;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.common.KafkaFuture;
import org.apache.kafka.common.errors.GroupIdNotFoundException;

public class DeleteGroups {
    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: DeleteGroups BOOTSTRAP GROUP...");
            System.exit(2);
        }
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "30000");
        int failed = 0;
        try (Admin admin = Admin.create(p)) {
            Map<String, KafkaFuture<Void>> r = admin
                .deleteConsumerGroups(Arrays.asList(args).subList(1, args.length)).deletedGroups();
            for (Map.Entry<String, KafkaFuture<Void>> e : r.entrySet()) {
                try {
                    e.getValue().get(30, TimeUnit.SECONDS);
                    System.out.println("Deleted group " + e.getKey() + ".");
                } catch (ExecutionException ex) {
                    if (!(ex.getCause() instanceof GroupIdNotFoundException)) {
                        System.err.println("Deleting group " + e.getKey() + " failed: " + ex.getCause());
                        failed++;
                    }
                }
            }
        }
        System.exit(failed == 0 ? 0 : 1);
    }
}
