// Drives Open Integration Engine through its own client library (mirth-client-core),
// for scripts/interop-oie.sh: creates and deploys the channel a hospital would use to
// feed adt-router, reads its statistics, and removes it.
//
//   java -cp "$SETUP/server-lib/*:..." OieChannel.java URL create NAME DIR HOST PORT RETRY_MS
//   java ... OieChannel.java URL stats CHANNEL_ID      -> {"received":..,"sent":..,"error":..,"queued":..}
//   java ... OieChannel.java URL remove CHANNEL_ID
//
// The channel: File Reader (DIR, sorted by name, files deleted after reading) ->
// TCP Sender in MLLP mode with queue on failure (retry every RETRY_MS), response
// validation on, and every other setting at the engine's defaults.

import com.mirth.connect.client.core.Client;
import com.mirth.connect.connectors.file.FileAction;
import com.mirth.connect.connectors.file.FileReceiverProperties;
import com.mirth.connect.connectors.tcp.TcpDispatcherProperties;
import com.mirth.connect.donkey.model.channel.DestinationConnectorProperties;
import com.mirth.connect.model.Channel;
import com.mirth.connect.model.ChannelStatistics;
import com.mirth.connect.model.Connector;
import com.mirth.connect.model.Connector.Mode;
import com.mirth.connect.model.Filter;
import com.mirth.connect.model.Transformer;
import com.mirth.connect.model.converters.ObjectXMLSerializer;
import com.mirth.connect.plugins.datatypes.hl7v2.HL7v2DataTypeProperties;

public class OieChannel {
    static Transformer hl7Transformer() {
        Transformer t = new Transformer();
        t.setInboundDataType("HL7V2");
        t.setOutboundDataType("HL7V2");
        t.setInboundProperties(new HL7v2DataTypeProperties());
        t.setOutboundProperties(new HL7v2DataTypeProperties());
        return t;
    }

    public static void main(String[] args) throws Exception {
        String url = args[0];
        String command = args[1];
        Client client = new Client(url);
        try {
            client.login("admin", "admin");
            ObjectXMLSerializer.getInstance().init(client.getVersion());
            switch (command) {
                case "create": {
                    Channel channel = new Channel();
                    channel.setId(client.getGuid());
                    channel.setName(args[2]);
                    // The scripts a new channel gets in the Administrator.
                    channel.setPreprocessingScript("return message;");
                    channel.setPostprocessingScript("return;");
                    channel.setDeployScript("return;");
                    channel.setUndeployScript("return;");

                    FileReceiverProperties file = new FileReceiverProperties();
                    file.setHost(args[3]);
                    file.setFileFilter("*.hl7");
                    file.setSortBy(FileReceiverProperties.SORT_BY_NAME);
                    file.setCheckFileAge(false);
                    file.setAfterProcessingAction(FileAction.DELETE);
                    file.getPollConnectorProperties().setPollingFrequency(200);
                    Connector source = new Connector();
                    source.setEnabled(true);
                    source.setMode(Mode.SOURCE);
                    source.setName("sourceConnector");
                    source.setTransportName(file.getName());
                    source.setProperties(file);
                    source.setFilter(new Filter());
                    source.setTransformer(hl7Transformer());
                    channel.setSourceConnector(source);

                    TcpDispatcherProperties tcp = new TcpDispatcherProperties();
                    tcp.setRemoteAddress(args[4]);
                    tcp.setRemotePort(args[5]);
                    DestinationConnectorProperties queue = tcp.getDestinationConnectorProperties();
                    queue.setQueueEnabled(true);
                    queue.setSendFirst(true);
                    queue.setRetryIntervalMillis(Integer.parseInt(args[6]));
                    queue.setValidateResponse(true);
                    Connector destination = new Connector();
                    destination.setEnabled(true);
                    destination.setMode(Mode.DESTINATION);
                    destination.setMetaDataId(1);
                    destination.setName("adt-router");
                    destination.setTransportName(tcp.getName());
                    destination.setProperties(tcp);
                    destination.setFilter(new Filter());
                    destination.setTransformer(hl7Transformer());
                    destination.setResponseTransformer(hl7Transformer());
                    channel.addDestination(destination);
                    channel.setNextMetaDataId(2);

                    client.createChannel(channel);
                    client.deployChannel(channel.getId());
                    System.out.println(channel.getId());
                    break;
                }
                case "stats": {
                    ChannelStatistics s = client.getStatistics(args[2]);
                    System.out.printf("{\"received\":%d,\"sent\":%d,\"error\":%d,\"queued\":%d,\"filtered\":%d}%n",
                            s.getReceived(), s.getSent(), s.getError(), s.getQueued(), s.getFiltered());
                    break;
                }
                case "remove": {
                    client.undeployChannel(args[2]);
                    client.removeChannel(args[2]);
                    break;
                }
                default:
                    throw new IllegalArgumentException("unknown command " + command);
            }
        } finally {
            client.close();
        }
        System.exit(0);
    }
}
